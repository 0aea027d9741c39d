export * from "./client";
export * from "./streams";
export type { components, operations, paths } from "./schema";
