/**
 * Every operation of the API once, through the typed client: compiled under `tsc --strict`
 * in CI, so a change to the document that breaks a caller breaks this file. Each call is
 * marked with its operationId (tests/api/test_typescript_client.py checks they are all here).
 */
import {
  createAtelierClient,
  feedEvents,
  jobEvents,
  type ProblemType,
  type webhooks,
} from "../src/index";

const baseUrl = "http://127.0.0.1:8000";
const token = () => "dev-token";
const api = createAtelierClient({ baseUrl, token });

export async function everyOperation(): Promise<void> {
  // operations
  await api.GET("/healthz"); // healthz
  await api.GET("/readyz"); // readyz
  await api.GET("/metrics"); // metrics
  await api.GET("/.well-known/jwks.json"); // dev_jwks

  // account
  const me = await api.GET("/v1/me"); // get_me
  if (me.data) console.log(me.data.credits, me.data.subscription?.status);
  const ledger = await api.GET("/v1/credits/ledger", { params: { query: { limit: 20 } } }); // list_credit_ledger
  ledger.data?.items.forEach((entry) => entry.reason satisfies "generate" | string);

  // generation
  const created = await api.POST("/v1/generations", {
    // create_generation
    body: { prompt: "a watercolor fox, flat icon", kind: "generate" },
    params: { header: { "idempotency-key": "fox-1", prefer: "wait=10" } },
  });
  if (created.error) {
    const kind: ProblemType = created.error.type;
    console.log(kind, created.error.detail);
    return;
  }
  const job = created.data;
  const status: "pending" | "running" | "completed" | "failed" = job.status;
  console.log(status);
  await api.GET("/v1/jobs", { params: { query: { status: ["pending", "running"] } } }); // list_jobs
  await api.GET("/v1/jobs/{job_id}", { params: { path: { job_id: job.id } } }); // get_job
  await api.GET("/v1/jobs/{job_id}/events", { params: { path: { job_id: job.id } }, parseAs: "stream" }); // stream_job_events
  for await (const event of jobEvents(job.id, { baseUrl, token })) {
    console.log(event.data.progress, event.data.image?.url);
  }
  const form = new FormData();
  form.append("file", new Blob([new Uint8Array([137, 80, 78, 71])], { type: "image/png" }), "fox.png");
  await api.POST("/v1/uploads", { body: form as never }); // create_upload

  // gallery
  const images = await api.GET("/v1/images", { params: { query: { limit: 10 } } }); // list_my_images
  const image = images.data?.items[0];
  await api.GET("/v1/feed", { params: { query: { cursor: images.data?.next_cursor ?? undefined } } }); // list_feed
  await api.GET("/v1/feed/events", { parseAs: "stream" }); // stream_feed_events
  const controller = new AbortController();
  for await (const event of feedEvents({ baseUrl, token, signal: controller.signal })) {
    if (event.event === "likes") console.log(event.data.id, event.data.likes_count);
    else if (event.event === "image") console.log(event.data.image_url, event.data.visibility);
    else if (event.event === "resync") controller.abort();
  }
  if (image) {
    const path = { path: { image_id: image.id } };
    await api.GET("/v1/images/{image_id}", { params: path }); // get_image
    await api.PATCH("/v1/images/{image_id}", { params: path, body: { visibility: "public" } }); // update_image
    await api.GET("/v1/images/{image_id}/download", { params: { ...path, query: { redirect: false } } }); // download_image
    await api.PUT("/v1/images/{image_id}/like", { params: path }); // like_image
    await api.DELETE("/v1/images/{image_id}/like", { params: path }); // unlike_image
    await api.DELETE("/v1/images/{image_id}", { params: path }); // delete_image
  }

  // prompts
  await api.GET("/v1/prompts"); // list_prompts
  const prompt = await api.POST("/v1/prompts", { body: { prompt_text: "a fox", title: "Fox" } }); // create_prompt
  if (prompt.data) {
    const path = { path: { prompt_id: prompt.data.id } };
    await api.GET("/v1/prompts/{prompt_id}", { params: path }); // get_prompt
    await api.PATCH("/v1/prompts/{prompt_id}", { params: path, body: { title: null } }); // update_prompt
    await api.DELETE("/v1/prompts/{prompt_id}", { params: path }); // delete_prompt
  }

  // packs
  await api.GET("/v1/packs"); // list_packs
  const pack = await api.POST("/v1/packs", { body: { name: "Space", style_prompt: "flat, pastel" } }); // create_pack
  if (pack.data) {
    const path = { path: { pack_id: pack.data.id } };
    await api.GET("/v1/packs/{pack_id}", { params: { ...path, query: { icons_limit: 10 } } }); // get_pack
    await api.PATCH("/v1/packs/{pack_id}", { params: path, body: { name: "Outer space" } }); // update_pack
    if (image) {
      await api.POST("/v1/packs/{pack_id}/icons", { params: path, body: { image_id: image.id } }); // add_pack_icon
      await api.DELETE("/v1/packs/{pack_id}/icons/{image_id}", {
        // remove_pack_icon
        params: { path: { pack_id: pack.data.id, image_id: image.id } },
      });
    }
    const set = await api.POST("/v1/packs/{pack_id}/generations", {
      // create_pack_generations
      params: path,
      body: { prompts: ["a rocket", "a planet"] },
    });
    if (set.data) {
      await api.GET("/v1/packs/{pack_id}/generations/{set_id}", {
        // get_pack_generations
        params: { path: { pack_id: pack.data.id, set_id: set.data.id } },
      });
    }
    await api.GET("/v1/packs/{pack_id}/export", { params: { ...path, query: { format: "zip" } }, parseAs: "blob" }); // export_pack
    await api.DELETE("/v1/packs/{pack_id}", { params: path }); // delete_pack
  }

  // files (signed links of local storage)
  await api.GET("/files/{key}", {
    // get_file
    params: { path: { key: "images/user_1/a.png" }, query: { exp: 1_900_000_000, sig: "0".repeat(64) } },
    parseAs: "blob",
  });

  // admin
  await api.POST("/v1/admin/users/{user_id}/credits", {
    // admin_adjust_credits
    params: { path: { user_id: "user_2abc" } },
    body: { delta: 10, reason: "refund for ticket #123" },
  });
  await api.GET("/v1/admin/users/{user_id}", { params: { path: { user_id: "user_2abc" } } }); // admin_get_user
  await api.GET("/v1/admin/stats", { params: { query: { days: 7 } } }); // admin_get_stats
  await api.DELETE("/v1/admin/images/{image_id}", {
    // admin_take_down_image
    params: { path: { image_id: "00000000-0000-0000-0000-000000000000" } },
  });

  // billing
  await api.GET("/v1/billing/products"); // list_billing_products
  await api.POST("/v1/billing/checkout", { body: { product_id: "credits_50" } }); // create_checkout_session
  await api.POST("/v1/billing/portal", { body: {} }); // create_billing_portal_session

  // API keys (for servers; shown once)
  const made = await api.POST("/v1/api-keys", { body: { name: "build server" } }); // create_api_key
  await api.GET("/v1/api-keys"); // list_api_keys
  if (made.data) {
    const key: string = made.data.key;
    void key;
    const path = { params: { path: { key_id: made.data.id } } };
    const shown = await api.GET("/v1/api-keys/{key_id}", path); // get_api_key
    if (shown.data) {
      const lastUsed: string | null | undefined = shown.data.last_used_at;
      void lastUsed;
    }
    await api.DELETE("/v1/api-keys/{key_id}", path); // delete_api_key
  }

  // outgoing webhooks
  const endpoint = await api.POST("/v1/webhook-endpoints", {
    // create_webhook_endpoint
    body: { url: "https://example.com/hooks", events: ["job.completed", "job.failed"] },
  });
  await api.GET("/v1/webhook-endpoints"); // list_webhook_endpoints
  if (endpoint.data) {
    const hook = { params: { path: { endpoint_id: endpoint.data.id } } };
    await api.GET("/v1/webhook-endpoints/{endpoint_id}", hook); // get_webhook_endpoint
    await api.PATCH("/v1/webhook-endpoints/{endpoint_id}", { ...hook, body: { enabled: false } }); // update_webhook_endpoint
    await api.POST("/v1/webhook-endpoints/{endpoint_id}/secret", hook); // rotate_webhook_endpoint_secret
    await api.GET("/v1/webhook-endpoints/{endpoint_id}/deliveries", hook); // list_webhook_deliveries
    await api.DELETE("/v1/webhook-endpoints/{endpoint_id}", hook); // delete_webhook_endpoint
  }

  // webhooks (called by Stripe and Clerk, not by the app; typed all the same)
  await api.POST("/webhooks/stripe"); // receive_stripe_webhook
  await api.POST("/webhooks/clerk"); // receive_clerk_webhook

  // last: the account is gone after this
  await api.DELETE("/v1/me"); // delete_me
}

/** What an integrator's webhook receiver gets, typed from the document's `webhooks` (verify
 * `webhook-signature` with the endpoint's secret first: the `standardwebhooks` package). */
type Delivery = webhooks["job.failed"]["post"]["requestBody"]["content"]["application/json"];

export function onDelivery(delivery: Delivery): string {
  const job = delivery.data;
  if (job === null) return "the job is gone";
  if (delivery.type === "job.completed") return job.image?.url ?? "no image";
  switch (job.error_code) {
    case "content_refused":
    case "invalid_request":
      return "ask the user for another prompt"; // refunded; another try would fail alike
    case "provider_unavailable":
    case "timed_out":
    case "storage_unavailable":
      return "try again later"; // refunded
    default:
      return job.error ?? "failed"; // refunded; codes may be added
  }
}
