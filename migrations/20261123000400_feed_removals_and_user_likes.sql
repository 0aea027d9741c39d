-- The live feed also says when a public image leaves it (deleted by the service or the
-- mobile app, or made private), so open clients can drop it instead of showing a broken
-- image until they refetch. Everything else is as in the gallery migration.
CREATE OR REPLACE FUNCTION atelier_notify_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
    was_public boolean;
BEGIN
    was_public := TG_OP <> 'INSERT'
        AND OLD.visibility = 'public' AND OLD.deleted_at IS NULL;
    IF TG_OP = 'DELETE' THEN
        IF was_public THEN
            PERFORM pg_notify('atelier_feed',
                json_build_object('type', 'removed', 'id', OLD.id)::text);
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.visibility <> 'public' OR NEW.deleted_at IS NOT NULL THEN
        IF was_public THEN
            PERFORM pg_notify('atelier_feed',
                json_build_object('type', 'removed', 'id', NEW.id)::text);
        END IF;
        RETURN NULL;
    END IF;
    IF NOT was_public THEN
        payload := json_build_object(
            'type', 'image', 'id', NEW.id, 'user_id', NEW.user_id,
            'prompt', NEW.prompt, 'image_url', NEW.image_url,
            'storage_key', NEW.storage_key, 'likes_count', NEW.likes_count,
            'visibility', NEW.visibility, 'width', NEW.width, 'height', NEW.height,
            'model', NEW.model, 'pack_id', NEW.pack_id, 'created_at', NEW.created_at)::text;
        IF octet_length(payload) >= 8000 THEN
            payload := json_build_object(
                'type', 'image', 'id', NEW.id, 'partial', true)::text;
        END IF;
        PERFORM pg_notify('atelier_feed', payload);
    ELSIF OLD.likes_count IS DISTINCT FROM NEW.likes_count THEN
        PERFORM pg_notify('atelier_feed', json_build_object(
            'type', 'likes', 'id', NEW.id, 'likes_count', NEW.likes_count)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER generated_images_notify_feed
    AFTER INSERT OR UPDATE OR DELETE ON generated_images
    FOR EACH ROW EXECUTE FUNCTION atelier_notify_feed();

-- Deleting a user (the mobile app, an admin, an erasure) removes their likes by cascade,
-- which would leave every image they liked counting a like that no longer exists. Before
-- the row goes, take those likes off the counts. First lock the images they liked (in id
-- order, so two deletions cannot deadlock): an unlike of theirs still in flight finishes
-- first. Then count from a fresh snapshot, which no longer holds the like that unlike
-- removed, so no like is taken off twice. A new like of theirs cannot start meanwhile:
-- its foreign key waits for the user row, which this deletion holds.
CREATE OR REPLACE FUNCTION atelier_unlike_for_deleted_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM generated_images
    WHERE id IN (SELECT image_id FROM image_likes WHERE user_id = OLD.id)
    ORDER BY id
    FOR NO KEY UPDATE;
    UPDATE generated_images g
    SET likes_count = g.likes_count - 1
    FROM image_likes l
    WHERE l.user_id = OLD.id AND l.image_id = g.id;
    RETURN OLD;
END
$$;

CREATE OR REPLACE TRIGGER users_unlike_before_delete
    BEFORE DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION atelier_unlike_for_deleted_user();
