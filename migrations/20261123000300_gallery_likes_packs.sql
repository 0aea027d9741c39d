-- Gallery: likes (the count kept beside the rows, in the same statement), icon packs, the
-- feed's NOTIFY, and keyset indexes for the saved prompts the mobile app writes.

CREATE TABLE IF NOT EXISTS image_likes (
    image_id   UUID NOT NULL,
    user_id    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT image_likes_pkey PRIMARY KEY (image_id, user_id),
    CONSTRAINT image_likes_image_id_fkey FOREIGN KEY (image_id)
        REFERENCES generated_images (id) ON DELETE CASCADE,
    CONSTRAINT image_likes_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX IF NOT EXISTS image_likes_user_id_idx ON image_likes (user_id);

CREATE TABLE IF NOT EXISTS icon_packs (
    id             UUID NOT NULL DEFAULT gen_random_uuid(),
    user_id        TEXT NOT NULL,
    name           TEXT NOT NULL,
    style_prompt   TEXT,
    cover_image_id UUID,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT icon_packs_pkey PRIMARY KEY (id),
    CONSTRAINT icon_packs_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT icon_packs_cover_image_id_fkey FOREIGN KEY (cover_image_id)
        REFERENCES generated_images (id) ON DELETE SET NULL,
    CONSTRAINT icon_packs_name_check CHECK (char_length(name) BETWEEN 1 AND 100),
    CONSTRAINT icon_packs_style_prompt_check CHECK (char_length(style_prompt) <= 1000)
);
CREATE INDEX IF NOT EXISTS icon_packs_user_created_idx
    ON icon_packs (user_id, created_at DESC, id DESC);

CREATE OR REPLACE TRIGGER icon_packs_set_updated_at
    BEFORE UPDATE ON icon_packs
    FOR EACH ROW EXECUTE FUNCTION atelier_set_updated_at();

ALTER TABLE generated_images
    ADD CONSTRAINT generated_images_pack_id_fkey FOREIGN KEY (pack_id)
        REFERENCES icon_packs (id) ON DELETE SET NULL;
CREATE INDEX IF NOT EXISTS generated_images_pack_created_idx
    ON generated_images (pack_id, created_at DESC, id DESC)
    WHERE pack_id IS NOT NULL AND deleted_at IS NULL;

CREATE INDEX IF NOT EXISTS custom_prompts_user_created_idx
    ON custom_prompts (user_id, created_at DESC, id DESC);

-- The live feed: a public image appearing (inserted public, or made public) and a public
-- image's like count changing, announced from whichever process made the change.
-- A NOTIFY payload must stay under 8000 bytes, and a prompt (2000 characters, up to 6 bytes
-- each once JSON-escaped) or a URL the mobile app stored can outgrow that: such an image is
-- announced without them (`partial`), and listeners read the row instead. An error here
-- would fail the insert itself.
CREATE OR REPLACE FUNCTION atelier_notify_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    IF NEW.visibility <> 'public' OR NEW.deleted_at IS NOT NULL THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' OR OLD.visibility IS DISTINCT FROM NEW.visibility THEN
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
    AFTER INSERT OR UPDATE ON generated_images
    FOR EACH ROW EXECUTE FUNCTION atelier_notify_feed();
