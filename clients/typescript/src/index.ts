/**
 * The Ssak3 API for TypeScript: the code protoc-gen-es generates from
 * `proto/` (re-exported per package below), served over Connect's gRPC
 * transport for Node, plus a thin layer:
 *
 * - `connect()` makes a client per service that sends
 *   `authorization: Bearer <token>` with every call (`bearer()`);
 * - unary calls are retried when the system says "try again" (`retrying()`:
 *   UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED when a concurrent change won, or
 *   RESOURCE_EXHAUSTED with a google.rpc.RetryInfo), after the delay the
 *   server asks for. Every unary
 *   call of the API is safe to repeat; CreateReservation is idempotent per
 *   `requestId`, which the layer fills in (a UUID) before the first attempt
 *   when it is empty, so that every retry carries the same key;
 * - `explain()` decodes a failed call's google.rpc details: the fields a
 *   BadRequest names and the delay a RetryInfo asks for.
 *
 * Streams (Watch*) are not retried: reconnect with the resume point of the
 * last item received (docs/api.md in the repository).
 */

import { randomUUID } from "node:crypto";

import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { BadRequestSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { MyPageService } from "./gen/ssak3/mypage/v1/mypage_pb.js";
import { NotificationService } from "./gen/ssak3/notify/v1/notify_pb.js";
import { PaymentService } from "./gen/ssak3/payment/v1/payment_pb.js";
import {
  CleaningService,
  CompanyService,
  ReservationService,
} from "./gen/ssak3/reservation/v1/reservation_pb.js";

export * as mypage from "./gen/ssak3/mypage/v1/mypage_pb.js";
export * as notify from "./gen/ssak3/notify/v1/notify_pb.js";
export * as payment from "./gen/ssak3/payment/v1/payment_pb.js";
export * as reservation from "./gen/ssak3/reservation/v1/reservation_pb.js";
export * as types from "./gen/ssak3/type/v1/money_pb.js";
export * as rpc from "./gen/google/rpc/error_details_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";

/** Where each service listens by default (`ssak3 up`). */
export const DEFAULT_PORTS = {
  reservation: 50051,
  payment: 50052,
  notify: 50053,
  mypage: 50054,
} as const;

/** A service of Ssak3, by the name of its default port. */
export type ServiceName = keyof typeof DEFAULT_PORTS;

/** One field a google.rpc.BadRequest names, and what is wrong with it. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call with its google.rpc details decoded. */
export interface ApiError {
  code: Code;
  message: string;
  fieldViolations: FieldViolation[];
  /** What the server's RetryInfo asks to wait before trying again, if it said. */
  retryDelayMs?: number;
}

/** Decodes any error a Connect client threw. */
export function explain(error: unknown): ApiError {
  const failure = ConnectError.from(error);
  const fieldViolations = failure
    .findDetails(BadRequestSchema)
    .flatMap((bad) => bad.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
  const delay = failure.findDetails(RetryInfoSchema)[0]?.retryDelay;
  return {
    code: failure.code,
    message: failure.rawMessage,
    fieldViolations,
    retryDelayMs: delay === undefined ? undefined : Number(delay.seconds) * 1000 + delay.nanos / 1e6,
  };
}

/** Sends `authorization: Bearer <token>` with every call. */
export function bearer(token: string | (() => string)): Interceptor {
  return (next) => async (request) => {
    request.header.set("authorization", `Bearer ${typeof token === "string" ? token : token()}`);
    return next(request);
  };
}

/** How unary calls are retried. */
export interface RetryPolicy {
  /** Attempts in all. */
  attempts: number;
  /** First backoff when the server names no delay (doubled each time, with jitter). */
  baseDelayMs: number;
  /** The longest wait between attempts. */
  maxDelayMs: number;
  /** How to wait (tests replace it). */
  sleep?: (ms: number) => Promise<void>;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 200, maxDelayMs: 10_000 };

function waitFor(policy: RetryPolicy, attempt: number, askedMs: number | undefined): number {
  if (askedMs !== undefined) {
    return Math.min(askedMs, policy.maxDelayMs);
  }
  const backoff = policy.baseDelayMs * 2 ** attempt;
  return Math.min(backoff * (0.5 + Math.random() / 2), policy.maxDelayMs);
}

/** Retries unary calls the server asks to try again, with the same request. */
export function retrying(policy: RetryPolicy = DEFAULT_RETRY): Interceptor {
  const sleep = policy.sleep ?? ((ms: number) => new Promise<void>((done) => setTimeout(done, ms)));
  return (next) => async (request) => {
    if (request.stream) {
      return next(request);
    }
    const key = request.method.input.fields.find((field) => field.name === "request_id");
    const message = request.message as Record<string, unknown>;
    if (key !== undefined && message[key.localName] === "") {
      // Chosen once, so that every attempt is the same request.
      message[key.localName] = randomUUID();
    }
    for (let attempt = 0; ; attempt++) {
      try {
        return await next(request);
      } catch (error) {
        const problem = explain(error);
        const retryable =
          problem.code === Code.Unavailable ||
          problem.code === Code.DeadlineExceeded ||
          problem.code === Code.Aborted ||
          (problem.code === Code.ResourceExhausted && problem.retryDelayMs !== undefined);
        if (!retryable || attempt + 1 >= policy.attempts || request.signal.aborted) {
          throw error;
        }
        await sleep(waitFor(policy, attempt, problem.retryDelayMs));
      }
    }
  };
}

/** How to reach Ssak3. */
export interface Options {
  /** The bearer token (a JWT; `ssak3 token` issues development ones), or a function returning the current one. */
  token: string | (() => string);
  /** Default 127.0.0.1. */
  host?: string;
  /** The reservation service's port; the others follow it (default 50051). */
  basePort?: number;
  /** Each service's port, overriding `basePort`. */
  ports?: Partial<Record<ServiceName, number>>;
  /** TLS (https) instead of plain HTTP/2. */
  tls?: boolean;
  retry?: RetryPolicy;
  /** More interceptors, run inside the layer's. */
  interceptors?: Interceptor[];
}

/** A client per public service. */
export interface Ssak3 {
  reservations: Client<typeof ReservationService>;
  cleaning: Client<typeof CleaningService>;
  companies: Client<typeof CompanyService>;
  payments: Client<typeof PaymentService>;
  notifications: Client<typeof NotificationService>;
  myPage: Client<typeof MyPageService>;
}

/** Clients of every public service, signed with one token. */
export function connect(options: Options): Ssak3 {
  const host = options.host ?? "127.0.0.1";
  const base = options.basePort ?? DEFAULT_PORTS.reservation;
  const interceptors = [bearer(options.token), retrying(options.retry), ...(options.interceptors ?? [])];
  const transport = (service: ServiceName) => {
    const port = options.ports?.[service] ?? base + (DEFAULT_PORTS[service] - DEFAULT_PORTS.reservation);
    return createGrpcTransport({
      baseUrl: `${options.tls ? "https" : "http"}://${host}:${port}`,
      interceptors,
    });
  };
  const reservation = transport("reservation");
  return {
    reservations: createClient(ReservationService, reservation),
    cleaning: createClient(CleaningService, reservation),
    companies: createClient(CompanyService, reservation),
    payments: createClient(PaymentService, transport("payment")),
    notifications: createClient(NotificationService, transport("notify")),
    myPage: createClient(MyPageService, transport("mypage")),
  };
}
