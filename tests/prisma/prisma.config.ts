// Prisma CLI config for the compatibility test (loaded by `prisma generate`).
//
// `engine: "js"` with a driver adapter is what keeps the CLI offline: without it every
// command first downloads the Rust schema engine from binaries.prisma.sh, which `generate`
// does not even use. Nothing here runs migrations; the service's own migrations (migrations/)
// build the database the client is pointed at.
import { PrismaPg } from "@prisma/adapter-pg";
import { defineConfig } from "prisma/config";

// The app's datasource reads DATABASE_URL and DIRECT_URL. `generate` never connects, but
// if it cannot resolve them it cannot read the generator block either, assumes the Rust
// query engine and tries to download that; so it gets placeholders when they are unset.
process.env.DATABASE_URL ??= "postgresql://prisma-generate@127.0.0.1:1/unused";
process.env.DIRECT_URL ??= process.env.DATABASE_URL;

export default defineConfig({
  schema: "schema",
  experimental: { adapter: true },
  engine: "js",
  adapter: async () => new PrismaPg({ connectionString: process.env.DATABASE_URL }),
});
