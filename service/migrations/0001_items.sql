-- Portable between PostgreSQL and SQLite: the service runs the same migration on both.
CREATE TABLE items (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    views BIGINT NOT NULL DEFAULT 0
);

-- An item's list: other items in the order they were added (the `list` strategy).
CREATE TABLE item_members (
    item_id BIGINT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    PRIMARY KEY (item_id, position)
);

-- An item's tags (the `set` strategy).
CREATE TABLE item_tags (
    item_id BIGINT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (item_id, tag)
);
