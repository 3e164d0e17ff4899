//! Lists and sets: elements added to and removed from a cached collection in place.

use super::Cache;
use crate::codec::encode_text;
use crate::error::Error;
use crate::key::CacheKey;
use crate::kind::{Kind, List, Set, Shape};
use crate::strategy::Strategy;
use crate::value::Collection;

impl Cache {
    fn encode_elems<V: Collection, K, Kd>(
        strategy: &Strategy<V, K, Kd>,
        elems: &[V::Elem],
    ) -> Result<Vec<Vec<u8>>, Error> {
        elems
            .iter()
            .map(|e| encode_text(strategy.value_codec(), e))
            .collect::<Result<_, _>>()
            .map_err(Error::Encode)
    }

    async fn push<V: Collection, K: CacheKey, Kd: Kind>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        let entry = self.render(strategy, key)?;
        let elems = Self::encode_elems(strategy, elems)?;
        let what = if Kd::SHAPE == Shape::List {
            "list_push"
        } else {
            "set_add"
        };
        self.mutate(
            what,
            strategy.strategy_name(),
            &entry,
            self.inner.backend.push(entry.loc(), &elems),
        )
        .await
    }

    async fn remove<V: Collection, K: CacheKey, Kd: Kind>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        let entry = self.render(strategy, key)?;
        let elems = Self::encode_elems(strategy, elems)?;
        let what = if Kd::SHAPE == Shape::List {
            "list_remove"
        } else {
            "set_remove"
        };
        self.mutate(
            what,
            strategy.strategy_name(),
            &entry,
            self.inner.backend.remove(entry.loc(), &elems),
        )
        .await
    }

    async fn len<V, K: CacheKey, Kd: Kind>(
        &self,
        strategy: &Strategy<V, K, Kd>,
        key: &K,
    ) -> Result<Option<u64>, Error> {
        let entry = self.render(strategy, key)?;
        self.settled(&entry).await?;
        self.inner.backend.len(entry.loc()).await
    }

    /// Appends elements to a cached list and returns its new length; `None` when the list is
    /// not cached (it stays uncached, and a load in flight will not fill).
    ///
    /// # Errors
    ///
    /// The key did not render, an element did not encode, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, List, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct GroupKey { group_id: u64 }
    /// const MEMBERS: Strategy<Vec<u64>, GroupKey, List> = Strategy::list("members:<group_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = GroupKey { group_id: 1 };
    /// cache.fetch(&MEMBERS, &key, || async { Ok::<_, std::io::Error>(vec![1, 2]) }).await?;
    /// assert_eq!(cache.list_push(&MEMBERS, &key, &[3]).await?, Some(3));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_push<V: Collection, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, List>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        self.push(strategy, key, elems).await
    }

    /// Removes every occurrence of the elements from a cached list and returns its new length;
    /// `None` when it is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, an element did not encode, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, List, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct GroupKey { group_id: u64 }
    /// # const MEMBERS: Strategy<Vec<u64>, GroupKey, List> = Strategy::list("members:<group_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = GroupKey { group_id: 1 };
    /// cache.fetch(&MEMBERS, &key, || async { Ok::<_, std::io::Error>(vec![1, 2]) }).await?;
    /// assert_eq!(cache.list_remove(&MEMBERS, &key, &[1]).await?, Some(1));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_remove<V: Collection, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, List>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        self.remove(strategy, key, elems).await
    }

    /// The length of a cached list; `None` when it is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, List, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct GroupKey { group_id: u64 }
    /// # const MEMBERS: Strategy<Vec<u64>, GroupKey, List> = Strategy::list("members:<group_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// assert_eq!(Cache::in_memory().list_len(&MEMBERS, &GroupKey { group_id: 1 }).await?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_len<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, List>,
        key: &K,
    ) -> Result<Option<u64>, Error> {
        self.len(strategy, key).await
    }

    /// Adds elements to a cached set and returns its new size; `None` when it is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, an element did not encode, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Set, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// const TAGS: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("tags:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// cache.fetch(&TAGS, &key, || async { Ok::<_, std::io::Error>(vec!["a".to_string()]) }).await?;
    /// assert_eq!(cache.set_add(&TAGS, &key, &["b".to_string()]).await?, Some(2));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_add<V: Collection, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Set>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        self.push(strategy, key, elems).await
    }

    /// Removes elements from a cached set and returns its new size; `None` when it is not
    /// cached.
    ///
    /// # Errors
    ///
    /// The key did not render, an element did not encode, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Set, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const TAGS: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("tags:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// cache.fetch(&TAGS, &key, || async { Ok::<_, std::io::Error>(vec!["a".to_string()]) }).await?;
    /// assert_eq!(cache.set_remove(&TAGS, &key, &["a".to_string()]).await?, Some(0));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_remove<V: Collection, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Set>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        self.remove(strategy, key, elems).await
    }

    /// Removes elements from a cached set; renamed [`set_remove`](Self::set_remove), like
    /// [`list_remove`](Self::list_remove).
    ///
    /// # Errors
    ///
    /// As [`set_remove`](Self::set_remove).
    #[deprecated(since = "0.1.1", note = "renamed `set_remove`")]
    pub async fn set_rem<V: Collection, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Set>,
        key: &K,
        elems: &[V::Elem],
    ) -> Result<Option<u64>, Error> {
        self.set_remove(strategy, key, elems).await
    }

    /// The size of a cached set; `None` when it is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Set, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const TAGS: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("tags:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// assert_eq!(Cache::in_memory().set_len(&TAGS, &ItemKey { item_id: 1 }).await?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_len<V, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Set>,
        key: &K,
    ) -> Result<Option<u64>, Error> {
        self.len(strategy, key).await
    }

    /// Whether a cached set holds `elem`; `None` when the set is not cached.
    ///
    /// # Errors
    ///
    /// The key did not render, the element did not encode, or Redis failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cacheobj::{Cache, CacheKey, Set, Strategy};
    /// # #[derive(serde::Serialize, CacheKey)] struct ItemKey { item_id: u64 }
    /// # const TAGS: Strategy<Vec<String>, ItemKey, Set> = Strategy::set("tags:<item_id>");
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let cache = Cache::in_memory();
    /// let key = ItemKey { item_id: 1 };
    /// cache.fetch(&TAGS, &key, || async { Ok::<_, std::io::Error>(vec!["a".to_string()]) }).await?;
    /// assert_eq!(cache.set_contains(&TAGS, &key, &"a".to_string()).await?, Some(true));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_contains<V: Collection, K: CacheKey>(
        &self,
        strategy: &Strategy<V, K, Set>,
        key: &K,
        elem: &V::Elem,
    ) -> Result<Option<bool>, Error> {
        let entry = self.render(strategy, key)?;
        let elem = encode_text(strategy.value_codec(), elem).map_err(Error::Encode)?;
        self.settled(&entry).await?;
        self.inner.backend.contains(entry.loc(), &elem).await
    }
}
