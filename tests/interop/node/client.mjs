// A Hubspoke client written from docs/protocol.md alone: no Python, no generated code.
//
// It signs a spawn with its own Ed25519 key, lets a first attempt time out, retries the SAME
// command_id (re-signed, fresh nonce) until it has the agent, retries once more and checks it
// gets the same agent, shows the ErrorInfo of a reused command_id, and polls GetAgent (audience:
// the hub) until the agent ends. Every reply is verified end to end against the spoke's key.
// It prints one JSON line; exit status 0 when every check passed, 1 otherwise.
//
// Plain ESM JavaScript, TypeScript-ready: the functions are small and typed by JSDoc.
//
//   node client.mjs --hub 127.0.0.1:7100 --hub-name hub --principal ts-service \
//     --key keys/ts-service.key --spoke spoke-1 --spoke-key "ed25519:BASE64..." \
//     [--task "duration=0.2"] [--command-id ID] [--deadline-ms 10000] [--first-deadline-ms 1] \
//     [--wait-s 30] [--protos ../../../protos] [--vectors ../../../docs/vectors/idempotency.json] \
//     [--ca tls/ca.crt --cert tls/ts-service.crt --tls-key tls/ts-service.tls.key [--server-name hub]]
//
// Every flag may also come from the environment: --hub-name → HUBSPOKE_HUB_NAME, and so on.

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));

// --- the protocol's constants (docs/protocol.md §1–§3) -------------------------------------

export const PAYLOAD_TYPE_COMMAND = "application/vnd.federation.v1.command+proto";
export const PAYLOAD_TYPE_RELAY = "application/vnd.federation.v1.relay+proto";
export const PAYLOAD_TYPE_REPLY = "application/vnd.federation.v1.reply+proto";
// docs/protocol.md §4.3: no ":" or "/", so no id can name another Redis key.
const COMMAND_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const ERROR_INFO_TYPE_URL = "type.googleapis.com/google.rpc.ErrorInfo";
const FINAL_STATES = new Set([
  "STATE_SUCCEEDED",
  "STATE_FAILED",
  "STATE_KILLED",
  "STATE_TIMED_OUT",
  "STATE_DEAD_LETTERED",
]);

// google.rpc.Status and ErrorInfo, as published in googleapis (google/rpc/*.proto).
const GOOGLE_RPC = `
syntax = "proto3";
package google.rpc;
import "google/protobuf/any.proto";
message Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
`;

// --- envelope: DSSE PAE + Ed25519 (§1) -------------------------------------------------------

/**
 * DSSE pre-authentication encoding: "DSSEv1 <len(type)> <type> <len(payload)> <payload>".
 * Lengths are byte lengths in ASCII decimal; the separators are single spaces (0x20).
 * @param {string} payloadType @param {Uint8Array} payload @returns {Buffer}
 */
export function pae(payloadType, payload) {
  const t = Buffer.from(payloadType, "utf8");
  return Buffer.concat([
    Buffer.from(`DSSEv1 ${t.length} `, "ascii"),
    t,
    Buffer.from(` ${payload.length} `, "ascii"),
    Buffer.from(payload),
  ]);
}

/** The 32 raw public-key bytes of an Ed25519 KeyObject (private or public). */
export function rawPublic(key) {
  const pub = key.type === "private" ? crypto.createPublicKey(key) : key;
  return Buffer.from(pub.export({ format: "jwk" }).x, "base64url");
}

/** Key text "ed25519:<base64 of the 32 raw bytes>" (§2). */
export function publicText(raw) {
  return `ed25519:${Buffer.from(raw).toString("base64")}`;
}

/** The first 16 hex digits of SHA-256 over the raw public bytes (§2). */
export function fingerprint(raw) {
  return crypto.createHash("sha256").update(raw).digest("hex").slice(0, 16);
}

/** Parse "ed25519:BASE64" into a public KeyObject, checking it is 32 bytes. */
export function publicFromText(text) {
  const t = text.trim().split(/\s+/)[0];
  if (!t.startsWith("ed25519:")) throw new Error("public key must start with 'ed25519:'");
  const raw = Buffer.from(t.slice("ed25519:".length), "base64");
  if (raw.length !== 32) throw new Error(`public key must be 32 bytes, got ${raw.length}`);
  return crypto.createPublicKey({
    key: { kty: "OKP", crv: "Ed25519", x: raw.toString("base64url") },
    format: "jwk",
  });
}

/** An Ed25519 private KeyObject from a 32-byte seed (PKCS#8 DER = fixed 16-byte prefix + seed). */
export function privateFromSeed(seed) {
  const prefix = Buffer.from("302e020100300506032b657004220420", "hex");
  return crypto.createPrivateKey({
    key: Buffer.concat([prefix, seed]),
    format: "der",
    type: "pkcs8",
  });
}

/**
 * Sign payload bytes: a SignedEnvelope as a plain object for the gRPC stub.
 * @param {Uint8Array} payload @param {string} payloadType @param {{key: crypto.KeyObject, keyId: string}} signer
 */
export function signEnvelope(payload, payloadType, signer) {
  const sig = crypto.sign(null, pae(payloadType, payload), signer.key);
  return {
    payload: Buffer.from(payload),
    payload_type: payloadType,
    signatures: [{ sig, key_id: signer.keyId }],
  };
}

/**
 * Verify an envelope against trusted public keys; return the exact signed payload bytes.
 * key_id is only a hint: it picks candidates by fingerprint; trust comes from `trusted`.
 * @param {{payload: Uint8Array, payload_type: string, signatures: {sig: Uint8Array, key_id: string}[]}} env
 * @param {string} payloadType
 * @param {{name: string, key: crypto.KeyObject, fingerprint: string}[]} trusted
 * @returns {{payload: Buffer, signer: string}}
 */
export function verifyEnvelope(env, payloadType, trusted) {
  if (!env) throw new Error("no envelope");
  if (env.payload_type !== payloadType) {
    throw new Error(`payload_type ${env.payload_type} is not ${payloadType}`);
  }
  const payload = Buffer.from(env.payload ?? []);
  if (payload.length === 0) throw new Error("envelope has no payload");
  const sigs = env.signatures ?? [];
  if (sigs.length === 0 || sigs.length > 4) throw new Error("envelope must carry 1-4 signatures");
  const message = pae(env.payload_type, payload);
  for (const s of sigs) {
    const fp = String(s.key_id).split("/").pop();
    for (const t of trusted) {
      if (t.fingerprint !== fp) continue;
      const sig = Buffer.from(s.sig ?? []);
      if (sig.length === 64 && crypto.verify(null, message, t.key, sig)) {
        return { payload, signer: t.name };
      }
    }
  }
  throw new Error("no signature by a trusted key verifies");
}

// --- protos -------------------------------------------------------------------------------------

/** protobufjs types for the signed payloads, and the HubService stub constructor. */
export function loadProtos(protosDir) {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(protosDir, target);
  root.loadSync(
    ["federation/v1/command.proto", "federation/v1/agent.proto", "google/protobuf/any.proto"],
    { keepCase: true },
  );
  protobuf.parse(GOOGLE_RPC, root, { keepCase: true });
  root.resolveAll();
  const def = protoLoader.loadSync("federation/v1/hub_service.proto", {
    includeDirs: [protosDir],
    keepCase: true, // field names exactly as in the .proto (payload_type, key_id)
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
    // bytes stay Buffers: the reply's payload must reach the verifier byte for byte.
  });
  const pkg = grpc.loadPackageDefinition(def);
  return {
    Command: root.lookupType("federation.v1.Command"),
    Reply: root.lookupType("federation.v1.Reply"),
    Status: root.lookupType("google.rpc.Status"),
    ErrorInfo: root.lookupType("google.rpc.ErrorInfo"),
    HubService: pkg.federation.v1.HubService,
  };
}

// --- commands (§3) -------------------------------------------------------------------------------

function timestamp(ms) {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}

/**
 * Serialize a Command: the header plus one body. A fresh nonce and issue time every call,
 * so each (re)try is a new signature over new bytes with the same command_id.
 */
export function commandBytes(P, { commandId, issuer, audience, validityMs = 300_000, body }) {
  if (!COMMAND_ID_RE.test(commandId)) throw new Error(`bad command_id ${commandId}`);
  const now = Date.now();
  const msg = P.Command.fromObject({
    command_id: commandId,
    issuer,
    audience,
    issue_time: timestamp(now),
    expire_time: timestamp(now + validityMs),
    nonce: crypto.randomBytes(24),
    ...body,
  });
  return Buffer.from(P.Command.encode(msg).finish());
}

// --- calls, replies, errors (§5, §8) ------------------------------------------------------------

/** A failed call's gRPC code and, from grpc-status-details-bin, its google.rpc.ErrorInfo. */
export function errorInfo(P, err) {
  const out = {
    code: err.code,
    code_name: grpc.status[err.code] ?? String(err.code),
    message: err.details ?? String(err.message),
    reason: "",
    domain: "",
    metadata: {},
  };
  const bins = err.metadata?.get("grpc-status-details-bin") ?? [];
  for (const bin of bins) {
    const status = P.Status.decode(Buffer.from(bin));
    for (const any of status.details) {
      if (any.type_url !== ERROR_INFO_TYPE_URL) continue;
      const info = P.ErrorInfo.toObject(P.ErrorInfo.decode(any.value), { defaults: true });
      return { ...out, message: status.message || out.message, ...info };
    }
  }
  return out;
}

function unary(stub, rpc, request, deadlineMs) {
  return new Promise((resolve, reject) => {
    stub[rpc](request, { deadline: Date.now() + deadlineMs }, (err, resp) =>
      err ? reject(err) : resolve(resp),
    );
  });
}

/**
 * Verify a reply end to end: signed by a trusted spoke key, from the expected responder,
 * answering exactly the command sent (command_id, SHA-256 of the signed command bytes),
 * carrying the expected result. Returns the parsed Reply as a plain object.
 */
export function verifyReply(P, env, { trusted, responder, commandId, commandPayload, result }) {
  const { payload, signer } = verifyEnvelope(env, PAYLOAD_TYPE_REPLY, trusted);
  const reply = P.Reply.toObject(P.Reply.decode(payload), {
    enums: String,
    longs: String,
    defaults: true,
    oneofs: true,
  });
  const want = crypto.createHash("sha256").update(commandPayload).digest();
  if (reply.responder !== signer) throw new Error("reply's responder is not its signer");
  if (responder && signer !== responder) throw new Error(`reply signed by ${signer}, not ${responder}`);
  if (reply.command_id !== commandId) throw new Error("reply answers another command_id");
  if (!want.equals(Buffer.from(reply.request_digest))) throw new Error("request_digest mismatch");
  if (reply.result !== result) throw new Error(`reply carries ${reply.result}, not ${result}`);
  if (result === "agent" && reply.agent.spoke && reply.agent.spoke !== signer) {
    throw new Error(`spoke ${signer} answered for ${reply.agent.spoke}`);
  }
  return reply;
}

// --- the journey -------------------------------------------------------------------------------

function options(argv, env) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new Error(`unexpected argument ${a}`);
    const eq = a.indexOf("=");
    if (eq > 0) o[a.slice(2, eq)] = a.slice(eq + 1);
    else o[a.slice(2)] = argv[++i];
  }
  const get = (name, dflt) =>
    o[name] ?? env[`HUBSPOKE_${name.toUpperCase().replaceAll("-", "_")}`] ?? dflt;
  const need = (name) => {
    const v = get(name);
    if (v === undefined || v === "") throw new Error(`--${name} is required`);
    return v;
  };
  const spokeKey = get("spoke-key") ?? fs.readFileSync(need("spoke-key-file"), "utf8");
  return {
    hub: need("hub"),
    hubName: get("hub-name", "hub"),
    principal: need("principal"),
    keyFile: need("key"),
    spoke: need("spoke"),
    spokeKey,
    task: get("task", "duration=0.2 steps=2"),
    commandId: get("command-id", crypto.randomUUID()),
    deadlineMs: Number(get("deadline-ms", "10000")),
    firstDeadlineMs: Number(get("first-deadline-ms", "1")),
    waitS: Number(get("wait-s", "30")),
    protos: get("protos", path.resolve(HERE, "../../../protos")),
    // Transport TLS (mutual): all three files, or none for plaintext to a loopback hub.
    ca: get("ca"),
    cert: get("cert"),
    tlsKey: get("tls-key"),
    serverName: get("server-name"), // the name on the hub's certificate; default: --hub-name
    vectors: get("vectors"), // docs/vectors/idempotency.json: run its vectors, nothing else
  };
}

/**
 * Channel credentials and options: mutual TLS with the federation's CA when --ca is given
 * (checking the hub's certificate carries its peer name, as hubctl does), else plaintext.
 */
export function channel(opt) {
  if (!opt.ca) return [grpc.credentials.createInsecure(), {}];
  if (!opt.cert || !opt.tlsKey) throw new Error("--ca needs --cert and --tls-key (mutual TLS)");
  const creds = grpc.credentials.createSsl(
    fs.readFileSync(opt.ca),
    fs.readFileSync(opt.tlsKey),
    fs.readFileSync(opt.cert),
  );
  const name = opt.serverName || opt.hubName;
  return [creds, { "grpc.ssl_target_name_override": name, "grpc.default_authority": name }];
}

/** The known-answer vector of docs/protocol.md §1, checked with this runtime's crypto. */
export function knownAnswerOk() {
  const key = privateFromSeed(Buffer.from([...Array(32).keys()]));
  const raw = rawPublic(key);
  const payload = Buffer.from("0a06636d642d303112086f70657261746f72", "hex");
  const m = pae(PAYLOAD_TYPE_COMMAND, payload);
  const sig = crypto.sign(null, m, key).toString("hex");
  return (
    publicText(raw) === "ed25519:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=" &&
    `vector/${fingerprint(raw)}` === "vector/56475aa75463474c" &&
    m.equals(
      Buffer.concat([
        Buffer.from("DSSEv1 43 application/vnd.federation.v1.command+proto 18 ", "ascii"),
        payload,
      ]),
    ) &&
    sig ===
      "6b29fd561c6887b4d13ff507eda25bac7c5cd8237c3581778e3d803464881fbd" +
        "600a4a18fbc77cb4ff1aa92cb2f6e177eeac930c237edeea2b43b2df42909906"
  );
}

async function main() {
  const opt = options(process.argv.slice(2), process.env);
  const P = loadProtos(opt.protos);
  const key = crypto.createPrivateKey(fs.readFileSync(opt.keyFile)); // PKCS#8 PEM
  if (key.asymmetricKeyType !== "ed25519") throw new Error("the key file is not an Ed25519 key");
  const signer = { key, keyId: `${opt.principal}/${fingerprint(rawPublic(key))}` };
  const spokePub = publicFromText(opt.spokeKey);
  const trusted = [{ name: opt.spoke, key: spokePub, fingerprint: fingerprint(rawPublic(spokePub)) }];
  const stub = new P.HubService(opt.hub, ...channel(opt));
  const out = { ok: false, vector_ok: knownAnswerOk(), command_id: opt.commandId, principal: opt.principal };

  /** Sign one spawn (fresh nonce) under commandId and call HubService.SpawnAgent. */
  const spawnBody = async (commandId, spawnAgent, deadlineMs) => {
    const payload = commandBytes(P, {
      commandId,
      issuer: opt.principal,
      audience: opt.spoke,
      body: { spawn_agent: spawnAgent },
    });
    const env = signEnvelope(payload, PAYLOAD_TYPE_COMMAND, signer);
    const resp = await unary(stub, "SpawnAgent", { command: env }, deadlineMs);
    const reply = verifyReply(P, resp.reply, {
      trusted,
      responder: opt.spoke,
      commandId,
      commandPayload: payload,
      result: "agent",
    });
    return reply.agent;
  };
  const spawn = (task, deadlineMs) =>
    spawnBody(opt.commandId, { profile: "synthetic", task }, deadlineMs);

  /** docs/vectors/idempotency.json: each vector's retry outcome under one fresh command_id. */
  const runVectors = async (file) => {
    const doc = JSON.parse(fs.readFileSync(file, "utf8"));
    const results = [];
    for (const v of doc.vectors) {
      const commandId = `vec-${crypto.randomUUID()}`;
      const body = (fields) => ({ profile: doc.profile, ...fields });
      const first = await spawnBody(commandId, body(v.first), opt.deadlineMs);
      let got;
      try {
        const again = await spawnBody(commandId, body(v.retry), opt.deadlineMs);
        got = again.agent_id === first.agent_id ? "SAME_AGENT" : `OTHER_AGENT ${again.agent_id}`;
      } catch (err) {
        if (err.code === undefined) throw err;
        got = errorInfo(P, err).reason;
      }
      results.push({ name: v.name, expect: v.expect, got });
    }
    return results;
  };

  /** The journey: a timed-out first attempt, retries, reuse, polling to the end. */
  const journey = async () => {
    // 1. The first attempt times out on the client: did the spoke store it? We cannot know.
    let first = null;
    try {
      first = await spawn(opt.task, opt.firstDeadlineMs);
      out.first_attempt = "OK";
    } catch (err) {
      out.first_attempt = err.code !== undefined ? errorInfo(P, err).code_name : String(err.message);
    }
    // 2. So retry the same command_id, re-signed; UNAVAILABLE is retried with backoff.
    let agent = null;
    for (let attempt = 1; agent === null; attempt++) {
      try {
        agent = await spawn(opt.task, opt.deadlineMs);
      } catch (err) {
        if (err.code !== grpc.status.UNAVAILABLE || attempt >= 5) throw err;
        await new Promise((r) => setTimeout(r, 200 * 2 ** (attempt - 1)));
      }
    }
    out.reply_verified = true;
    out.agent_id = agent.agent_id;
    out.agent_name = agent.name;
    out.issuer = agent.issuer;
    // 3. Once more with the same id: the same agent, never a second one.
    const again = await spawn(opt.task, opt.deadlineMs);
    out.retry_reply_verified = true;
    out.retry_agent_id = again.agent_id;
    out.same_agent = again.agent_id === agent.agent_id && (!first || first.agent_id === agent.agent_id);
    // 4. The same id with another meaning: ALREADY_EXISTS, reason COMMAND_ID_REUSED.
    try {
      await spawn(`${opt.task} (changed)`, opt.deadlineMs);
      out.reuse_error = null;
    } catch (err) {
      if (err.code === undefined) throw err;
      out.reuse_error = errorInfo(P, err);
    }
    // 5. Poll GetAgent with audience = the hub: the hub finds the spoke; the spoke signs.
    const deadline = Date.now() + opt.waitS * 1000;
    let polls = 0;
    let state = "";
    let got = null;
    while (Date.now() < deadline) {
      const commandId = crypto.randomUUID();
      const payload = commandBytes(P, {
        commandId,
        issuer: opt.principal,
        audience: opt.hubName,
        body: { get_agent: { agent: agent.agent_id } },
      });
      const resp = await unary(
        stub,
        "GetAgent",
        { command: signEnvelope(payload, PAYLOAD_TYPE_COMMAND, signer) },
        opt.deadlineMs,
      );
      got = verifyReply(P, resp.reply, {
        trusted,
        responder: null, // any spoke this client trusts; here the one it knows
        commandId,
        commandPayload: payload,
        result: "agent",
      }).agent;
      polls++;
      state = got.state;
      if (FINAL_STATES.has(state)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    out.polls = polls;
    out.final_state = state;
    out.exit_code = got?.exit_code ?? null;
    out.receipt_status = got?.receipt?.status ?? "";
    out.ok =
      out.vector_ok &&
      out.same_agent &&
      state === "STATE_SUCCEEDED" &&
      out.reuse_error?.reason === "COMMAND_ID_REUSED";
  };

  try {
    if (opt.vectors) {
      out.vectors = await runVectors(opt.vectors);
      out.ok = out.vector_ok && out.vectors.every((v) => v.got === v.expect);
    } else {
      await journey();
    }
  } catch (err) {
    out.error = err.code !== undefined ? errorInfo(P, err) : String(err.stack ?? err);
  } finally {
    stub.close();
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
  return out.ok ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stdout.write(`${JSON.stringify({ ok: false, error: String(err.stack ?? err) })}\n`);
      process.exit(1);
    },
  );
}
