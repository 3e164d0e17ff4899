//! The HTTP API. Handlers parse and check their input (any mistake is a 4xx with a message),
//! call `cached`, and map the outcome to a response.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cached;
use crate::error::AppError;
use crate::strategies::Item;
use crate::AppState;

/// The most ids one batch read may ask for.
pub const MAX_BATCH: usize = 1000;
/// The longest item name or tag, in characters.
pub const MAX_NAME: usize = 200;

/// Parses a path id: an integer from 1 to `i64::MAX` (the database's `BIGINT`).
///
/// # Errors
///
/// A 400 naming the bad value.
pub fn parse_id(raw: &str) -> Result<u64, AppError> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|&id| id >= 1 && i64::try_from(id).is_ok())
        .ok_or_else(|| {
            let shown: String = raw.chars().take(40).collect();
            AppError::BadRequest(format!(
                "invalid item id {shown:?}: expected an integer from 1 to {}",
                i64::MAX
            ))
        })
}

/// Parses `ids=1,2,3`: at most [`MAX_BATCH`] ids, each valid for [`parse_id`].
///
/// # Errors
///
/// A 400 saying what is wrong.
pub fn parse_ids(raw: &str) -> Result<Vec<u64>, AppError> {
    let parts: Vec<&str> = raw.split(',').filter(|p| !p.trim().is_empty()).collect();
    if parts.is_empty() {
        return Err(AppError::BadRequest(
            "ids must list at least one item id, e.g. ?ids=1,2,3".into(),
        ));
    }
    if parts.len() > MAX_BATCH {
        return Err(AppError::BadRequest(format!(
            "too many ids: {} (at most {MAX_BATCH} per request)",
            parts.len()
        )));
    }
    parts.into_iter().map(parse_id).collect()
}

fn check_text(what: &str, text: &str) -> Result<(), AppError> {
    let len = text.chars().count();
    if text.trim().is_empty() || len > MAX_NAME {
        return Err(AppError::BadRequest(format!(
            "{what} must be 1 to {MAX_NAME} characters, not blank (got {len})"
        )));
    }
    Ok(())
}

fn not_found(id: u64) -> AppError {
    AppError::NotFound(format!("no item {id}"))
}

/// `GET /items/{id}`: through the obj strategy; 404s are cached too.
pub async fn get_item(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Item>, AppError> {
    let id = parse_id(&id)?;
    cached::item(&state, id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

/// `GET /items/{id}/hash`: the same row through the hash strategy.
pub async fn get_item_hash(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Item>, AppError> {
    let id = parse_id(&id)?;
    cached::item_in_hash(&state, id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

/// Query of `GET /items`.
#[derive(Debug, Deserialize)]
pub struct Batch {
    ids: Option<String>,
}

/// Body of `GET /items?ids=..`.
#[derive(Debug, Serialize)]
pub struct BatchBody {
    /// The items found, in the order asked.
    pub items: Vec<Item>,
    /// The ids asked for that do not exist.
    pub missing: Vec<u64>,
}

/// `GET /items?ids=1,2,3`: one cache round trip, one database query for the misses.
pub async fn get_items(
    State(state): State<AppState>,
    query: Result<Query<Batch>, QueryRejection>,
) -> Result<Json<BatchBody>, AppError> {
    let Query(batch) = query?;
    let raw = batch.ids.ok_or_else(|| {
        AppError::BadRequest("missing query parameter ids, e.g. /items?ids=1,2,3".into())
    })?;
    let ids = parse_ids(&raw)?;
    let found = cached::items(&state, &ids).await?;
    let mut body = BatchBody {
        items: Vec::new(),
        missing: Vec::new(),
    };
    for (id, item) in ids.into_iter().zip(found) {
        match item {
            Some(item) => body.items.push(item),
            None => body.missing.push(id),
        }
    }
    Ok(Json(body))
}

/// Body of `PUT /items/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutItem {
    name: String,
}

/// `PUT /items/{id}`: creates or renames the item, then invalidates its entries.
pub async fn put_item(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<PutItem>, JsonRejection>,
) -> Result<Json<Item>, AppError> {
    let id = parse_id(&id)?;
    let Json(body) = body?;
    check_text("name", &body.name)?;
    let item = cached::write_item(&state, id, || async {
        Ok(state.db.put_item(id, &body.name).await?)
    })
    .await?;
    Ok(Json(item))
}

/// `DELETE /items/{id}`: 204, or 404 when there was no such item.
pub async fn delete_item(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    let id = parse_id(&id)?;
    let existed =
        cached::write_item(&state, id, || async { Ok(state.db.delete_item(id).await?) }).await?;
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(id))
    }
}

/// `GET /items/{id}/views`: the counter strategy.
pub async fn get_views(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    // The item's (negatively cached) row first, so unknown ids never reach the database.
    cached::item(&state, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let views = cached::views(&state, id).await?;
    Ok(Json(json!({ "id": id, "views": views })).into_response())
}

/// `POST /items/{id}/views`: one more view.
pub async fn add_view(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    let views = cached::add_view(&state, id).await?;
    Ok(Json(json!({ "id": id, "views": views })).into_response())
}

/// `GET /items/{id}/members`: the list strategy.
pub async fn get_members(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    cached::item(&state, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let members = cached::members(&state, id).await?;
    Ok(Json(json!({ "id": id, "members": members })).into_response())
}

/// Body of `POST /items/{id}/members`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    member_id: u64,
}

/// `POST /items/{id}/members`: appends to the list.
pub async fn add_member(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<AddMember>, JsonRejection>,
) -> Result<StatusCode, AppError> {
    let id = parse_id(&id)?;
    let Json(body) = body?;
    let member = parse_id(&body.member_id.to_string())?;
    cached::add_member(&state, id, member).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /items/{id}/tags`: the set strategy.
pub async fn get_tags(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = parse_id(&id)?;
    cached::item(&state, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let mut tags = cached::tags(&state, id).await?;
    tags.sort(); // a set has no order; sorted output is stable for clients
    Ok(Json(json!({ "id": id, "tags": tags })).into_response())
}

/// Body of `POST /items/{id}/tags`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddTag {
    tag: String,
}

/// `POST /items/{id}/tags`: adds a tag.
pub async fn add_tag(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<AddTag>, JsonRejection>,
) -> Result<StatusCode, AppError> {
    let id = parse_id(&id)?;
    let Json(body) = body?;
    check_text("tag", &body.tag)?;
    cached::add_tag(&state, id, body.tag).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unknown routes: a JSON 404 like every other error.
pub async fn no_route() -> AppError {
    AppError::NotFound("no such route".into())
}

/// A known route with another method: a JSON 405.
pub async fn wrong_method() -> AppError {
    AppError::Rejected(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert_eq!(parse_id("42").ok(), Some(42));
        for bad in [
            "",
            "abc",
            "0",
            "-1",
            "1.5",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_ids("1,2,,3").ok(), Some(vec![1, 2, 3]));
        assert!(parse_ids("").is_err());
        let many = vec!["1"; MAX_BATCH + 1].join(",");
        assert!(parse_ids(&many).is_err());
    }
}
