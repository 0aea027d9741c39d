export * from "./client";
export * from "./streams";
export type { components, operations, paths, webhooks } from "./schema";
