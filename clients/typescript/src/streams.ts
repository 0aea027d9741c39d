/**
 * The job and feed event streams, read with `fetch` (an EventSource cannot send the token):
 * the token in the `Authorization` header, `Last-Event-ID` on a reconnect, and typed events.
 * A feed that reconnects gets `resync`: fetch `/v1/feed` again, as the event says.
 */
import type { components } from "./schema";

type Schemas = components["schemas"];

/** Each feed event's `data`, parsed (the document gives it as JSON text). */
export interface FeedEventData {
  ready: Schemas["FeedReadyData"];
  image: Schemas["ImageItem"];
  likes: Schemas["LikesChanged"];
  removed: Schemas["ImageRemoved"];
  resync: Schemas["Resync"];
}
export interface JobEventData {
  job: Schemas["Job"];
}

// The maps above name exactly the events the document lists: a new event fails to compile.
type FeedNames = Schemas["FeedReady" | "FeedImage" | "FeedLikes" | "FeedRemoved" | "FeedResync"]["event"];
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const feedEventsMatch: Same<FeedNames, keyof FeedEventData> = true;
const jobEventsMatch: Same<Schemas["JobEvent"]["event"], keyof JobEventData> = true;
void feedEventsMatch;
void jobEventsMatch;

export type StreamEvent<M> = {
  [K in keyof M]: { event: K; id: string | undefined; data: M[K] };
}[keyof M];
export type FeedEvent = StreamEvent<FeedEventData>;
export type JobEvent = StreamEvent<JobEventData>;

export interface StreamOptions {
  baseUrl: string;
  token: () => string | undefined | Promise<string | undefined>;
  /** Stop reading (and reconnecting). */
  signal?: AbortSignal;
  /** The last event id seen (sent as `Last-Event-ID`): the feed answers `resync` when it
   * cannot replay from there; a job stream starts again from the job's current state. */
  lastEventId?: string;
  /** Wait before reconnecting after the connection drops, in ms (default 1000). */
  retryMs?: number;
  fetch?: typeof globalThis.fetch;
}

export class StreamError extends Error {
  constructor(
    readonly status: number,
    readonly problem: Schemas["Problem"] | undefined,
  ) {
    super(problem?.detail ?? `stream answered ${status}`);
  }
}

/** Server-sent events of `path`, parsed, reconnecting with `Last-Event-ID` until aborted
 * (or, for a job, until the server ends the stream after the job's last event). */
async function* readStream<M>(
  path: string,
  options: StreamOptions,
  reconnect: (last: StreamEvent<M> | undefined) => boolean,
): AsyncGenerator<StreamEvent<M>> {
  const doFetch = options.fetch ?? globalThis.fetch;
  let lastEventId = options.lastEventId;
  let last: StreamEvent<M> | undefined;
  for (;;) {
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    const token = await options.token();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (lastEventId !== undefined) headers["Last-Event-ID"] = lastEventId;
    let response: Response;
    try {
      response = await doFetch(new URL(path, options.baseUrl), {
        headers,
        ...(options.signal ? { signal: options.signal } : {}),
      });
    } catch (error) {
      if (options.signal?.aborted) return;
      await sleep(options.retryMs ?? 1000);
      continue;
    }
    if (!response.ok || !response.body) {
      const problem = (await response.json().catch(() => undefined)) as Schemas["Problem"] | undefined;
      throw new StreamError(response.status, problem);
    }
    try {
      for await (const event of parseEvents<M>(response.body)) {
        if (event.id !== undefined) lastEventId = event.id;
        last = event;
        yield event;
      }
    } catch (error) {
      if (options.signal?.aborted) return;
    }
    if (options.signal?.aborted || !reconnect(last)) return;
    await sleep(options.retryMs ?? 1000);
  }
}

/** The public feed: `ready`, then `image`, `likes`, `removed` and `resync` events. */
export function feedEvents(options: StreamOptions): AsyncGenerator<FeedEvent> {
  return readStream<FeedEventData>("/v1/feed/events", options, () => true);
}

/** One job's events until it has completed or failed. */
export function jobEvents(jobId: string, options: StreamOptions): AsyncGenerator<JobEvent> {
  const ended = (last: JobEvent | undefined) =>
    last !== undefined && (last.data.status === "completed" || last.data.status === "failed");
  return readStream<JobEventData>(`/v1/jobs/${encodeURIComponent(jobId)}/events`, options, (last) => !ended(last));
}

/** Parse a text/event-stream body (WHATWG HTML §9.2.6): `event`, `id` and `data` lines. */
export async function* parseEvents<M>(body: ReadableStream<Uint8Array>): AsyncGenerator<StreamEvent<M>> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "message";
  let id: string | undefined;
  let data: string[] = [];
  // A CR that ended the last read ended its line then; an LF that begins this one is its pair.
  let pairedLF = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return; // an event its blank line did not end is dropped, as the standard says
    let chunk = decoder.decode(value, { stream: true });
    if (pairedLF && chunk !== "") {
      if (chunk.startsWith("\n")) chunk = chunk.slice(1);
      pairedLF = false;
    }
    buffer += chunk;
    let newline: number;
    while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      const crlf = buffer.startsWith("\r\n", newline);
      pairedLF = !crlf && buffer[newline] === "\r" && newline === buffer.length - 1;
      buffer = buffer.slice(newline + (crlf ? 2 : 1));
      if (line === "") {
        if (data.length > 0) {
          yield { event, id, data: JSON.parse(data.join("\n")) } as StreamEvent<M>;
        }
        event = "message";
        id = undefined;
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue; // a comment: the server's keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = text;
      else if (field === "data") data.push(text);
      else if (field === "id") id = text;
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
