// The Vercel AI SDK's default OpenAI model (the Responses API) streaming through a base URL.
//
//   node vercel_stream.mjs text|tool    (env: SLUICE_BASE_URL, SLUICE_API_KEY, SLUICE_MODEL)
//
// Prints one JSON object per line: every text delta and tool call as it arrives, with `t` (epoch
// milliseconds at arrival), then one {"type": "result", ...} line with the whole answer. Any stream
// error, a missing setting or a run over SLUICE_TIMEOUT_MS exits non-zero with the error on stderr.
import { createOpenAI } from "@ai-sdk/openai";
import { jsonSchema, streamText, tool } from "ai";
import { z } from "zod";

const now = () => performance.timeOrigin + performance.now();
const emit = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

function fail(message) {
  process.stderr.write(`vercel_stream: ${message}\n`);
  process.exit(1);
}

function setting(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
}

// Two tools, so both of the SDK's schema forms reach the wire: zod and plain JSON schema.
const tools = {
  get_weather: tool({
    description: "The current weather in a city.",
    inputSchema: z.object({ city: z.string(), unit: z.enum(["celsius", "fahrenheit"]) }),
  }),
  get_time: tool({
    description: "The local time in a city.",
    inputSchema: jsonSchema({
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
      additionalProperties: false,
    }),
  }),
};

const ENDED = new Set(["stop", "length", "tool-calls", "content-filter"]);

const PROMPTS = {
  text: { prompt: "Say hello." },
  tool: { prompt: "What is the weather in Paris?", tools, toolChoice: "auto" },
};

async function main() {
  const mode = process.argv[2] ?? "text";
  if (!(mode in PROMPTS)) fail(`unknown mode ${mode} (text or tool)`);
  const provider = createOpenAI({ baseURL: setting("SLUICE_BASE_URL"), apiKey: setting("SLUICE_API_KEY") });
  const started = now();
  const result = streamText({
    model: provider(setting("SLUICE_MODEL")), // the default model: the Responses API
    ...PROMPTS[mode],
    maxRetries: 0, // a retry would hide the first failure
    abortSignal: AbortSignal.timeout(Number(process.env.SLUICE_TIMEOUT_MS ?? 30000)),
    onError: () => {}, // errors are read from the stream below; this stops the SDK's own console print
  });
  let text = "";
  const toolCalls = [];
  let finish = null;
  for await (const part of result.fullStream) {
    if (part.type === "error") fail(`stream error: ${part.error?.stack ?? JSON.stringify(part.error)}`);
    if (part.type === "abort") fail("stream aborted (timeout)");
    if (part.type === "text-delta") {
      text += part.text;
      emit({ type: "text", delta: part.text, t: now() });
    } else if (part.type === "tool-call") {
      // `invalid`: the SDK found the input does not fit the tool's schema
      const call = { toolCallId: part.toolCallId, toolName: part.toolName, input: part.input, invalid: !!part.invalid };
      toolCalls.push(call);
      emit({ type: "tool-call", ...call, t: now() });
    } else if (part.type === "finish") {
      finish = { finishReason: part.finishReason, usage: part.totalUsage };
    }
  }
  if (finish === null) fail("the stream ended without a finish part");
  // "interrupted", "error", "other": the stream ended without a terminal response event
  if (!ENDED.has(finish.finishReason)) fail(`the stream did not finish: ${JSON.stringify(finish)}`);
  const response = await result.response;
  emit({ type: "result", text, toolCalls, ...finish, responseId: response.id, modelId: response.modelId,
         headers: response.headers ?? {}, started, ended: now() }); // prettier-ignore
}

main().catch((error) => fail(error?.stack ?? String(error)));
