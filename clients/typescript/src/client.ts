/**
 * A thin client over openapi-fetch: every path, parameter, body and answer is typed from
 * the generated `schema.d.ts`, and the bearer token goes on every request.
 */
import createClient, { type Client, type Middleware } from "openapi-fetch";

import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
/** Every problem `type` the service answers (RFC 9457 problem+json): those of each
 * `Problem<status>` schema the document has, so a new status needs no change here. */
export type ProblemType = Schemas[Extract<keyof Schemas, `Problem${number}`>]["type"];

export interface AtelierOptions {
  /** e.g. `http://127.0.0.1:8000` */
  baseUrl: string;
  /** The Clerk session token (or, in development, `atelier dev-token`); called per request. */
  token?: () => string | undefined | Promise<string | undefined>;
  fetch?: typeof globalThis.fetch;
}

export type AtelierClient = Client<paths>;

export function createAtelierClient(options: AtelierOptions): AtelierClient {
  const client = createClient<paths>({
    baseUrl: options.baseUrl,
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  const { token } = options;
  if (token) {
    const auth: Middleware = {
      async onRequest({ request }) {
        const value = await token();
        if (value) request.headers.set("Authorization", `Bearer ${value}`);
        return request;
      },
    };
    client.use(auth);
  }
  return client;
}
