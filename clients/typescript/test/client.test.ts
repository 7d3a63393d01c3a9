// The hand-written layer on its own: tokens, retries, error details.

import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";
import type { UnaryRequest, UnaryResponse } from "@connectrpc/connect";

import { Code, ConnectError, bearer, explain, reservation, retrying, rpc } from "@ssak3/client";

type Next = (request: UnaryRequest) => Promise<UnaryResponse>;
/** A detail to put on an error, as a server would. */
type OutgoingDetail = NonNullable<ConstructorParameters<typeof ConnectError>[3]>[number];

function unary(method: "createReservation" | "getReservation", message: object): UnaryRequest {
  const schema =
    method === "createReservation"
      ? reservation.CreateReservationRequestSchema
      : reservation.GetReservationRequestSchema;
  return {
    stream: false,
    service: reservation.ReservationService,
    method: reservation.ReservationService.method[method],
    requestMethod: "POST",
    url: "http://127.0.0.1:50051",
    signal: new AbortController().signal,
    header: new Headers(),
    contextValues: undefined,
    message: create(schema, message),
  } as unknown as UnaryRequest;
}

function failure(code: Code, message: string, details: OutgoingDetail[] = []) {
  return new ConnectError(message, code, undefined, details);
}

function retryInfo(seconds: number) {
  const detail: OutgoingDetail = {
    desc: rpc.RetryInfoSchema,
    value: { retryDelay: { seconds: BigInt(seconds), nanos: 0 } },
  };
  return detail;
}

/** A server answering with `outcomes` in turn, recording what it was sent. */
function server(outcomes: (ConnectError | "ok")[]) {
  const seen: { requestId: unknown; authorization: string | null }[] = [];
  const next: Next = async (request) => {
    seen.push({
      requestId: (request.message as { requestId?: unknown }).requestId,
      authorization: request.header.get("authorization"),
    });
    const outcome = outcomes.shift();
    if (outcome === undefined || outcome === "ok") {
      return { stream: false, message: request.message } as unknown as UnaryResponse;
    }
    throw outcome;
  };
  return { next, seen };
}

function layer(slept: number[]) {
  const retry = retrying({ attempts: 4, baseDelayMs: 200, maxDelayMs: 10_000, sleep: async (ms) => void slept.push(ms) });
  const auth = bearer("t0k3n");
  return (next: Next) => auth(retry(next as never) as never) as unknown as Next;
}

test("UNAVAILABLE is retried after the asked delay, with the same request_id", async () => {
  const slept: number[] = [];
  const busy = failure(Code.Unavailable, "pay again shortly", [retryInfo(3)]);
  const { next, seen } = server([busy, busy, "ok"]);
  const request = unary("createReservation", { address: "1 Main St" });
  await layer(slept)(next)(request);
  assert.deepEqual(slept, [3000, 3000]);
  assert.equal(seen.length, 3);
  const keys = new Set(seen.map((s) => s.requestId));
  assert.equal(keys.size, 1);
  assert.notEqual([...keys][0], "");
  assert.equal((request.message as unknown as { requestId: string }).requestId, [...keys][0]);
  for (const s of seen) {
    assert.equal(s.authorization, "Bearer t0k3n");
  }
});

test("a request_id of the caller is kept", async () => {
  const slept: number[] = [];
  const { next, seen } = server([failure(Code.DeadlineExceeded, "slow"), "ok"]);
  await layer(slept)(next)(unary("createReservation", { requestId: "mine-1" }));
  assert.deepEqual(
    seen.map((s) => s.requestId),
    ["mine-1", "mine-1"],
  );
  assert.equal(slept.length, 1);
  assert.ok(slept[0] <= 200);
});

test("a lost race is retried", async () => {
  const slept: number[] = [];
  const { next, seen } = server([failure(Code.Aborted, "changed meanwhile"), "ok"]);
  await layer(slept)(next)(unary("getReservation", { reservationId: "r" }));
  assert.equal(seen.length, 2);
});

test("bad input is not retried and its fields are decoded", async () => {
  const slept: number[] = [];
  const violation: OutgoingDetail = {
    desc: rpc.BadRequestSchema,
    value: { fieldViolations: [{ field: "address", description: "is required" }] },
  };
  const bad = failure(Code.InvalidArgument, "invalid address: is required", [violation]);
  const { next, seen } = server([bad]);
  await assert.rejects(layer(slept)(next)(unary("createReservation", {})), (error: unknown) => {
    const problem = explain(error);
    assert.equal(problem.code, Code.InvalidArgument);
    assert.deepEqual(problem.fieldViolations, [{ field: "address", description: "is required" }]);
    assert.equal(problem.retryDelayMs, undefined);
    return true;
  });
  assert.equal(seen.length, 1);
  assert.deepEqual(slept, []);
});

test("retries stop after the last attempt", async () => {
  const slept: number[] = [];
  const busy = failure(Code.Unavailable, "down", [retryInfo(1)]);
  const { next, seen } = server([busy, busy, busy, busy]);
  await assert.rejects(layer(slept)(next)(unary("getReservation", { reservationId: "r" })), (error: unknown) => {
    assert.equal(explain(error).retryDelayMs, 1000);
    return true;
  });
  assert.equal(seen.length, 4);
});

test("rate limits are retried only when the server says when", async () => {
  const slept: number[] = [];
  const limited = server([failure(Code.ResourceExhausted, "slow down", [retryInfo(2)]), "ok"]);
  await layer(slept)(limited.next)(unary("getReservation", { reservationId: "r" }));
  assert.deepEqual(slept, [2000]);
  const refused = server([failure(Code.ResourceExhausted, "no")]);
  await assert.rejects(layer(slept)(refused.next)(unary("getReservation", { reservationId: "r" })));
  assert.equal(refused.seen.length, 1);
});
