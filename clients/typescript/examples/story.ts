// The whole Ssak3 story (F1-F8) as a partner's TypeScript app runs it.
//
// A customer books and pays, the company is told and sees its jobs in
// order, cleans, the customer is told; a second booking is cancelled and
// refunded and the company is told while its watch was disconnected, which
// it resumes without missing anything. Every step checks what the API
// promises; the script exits non-zero at the first broken promise.
//
//   node build/examples/story.js --base-port 50051 \
//     --customer-token "$(ssak3 token --role customer --subject alice)" \
//     --cleaner-token "$(ssak3 token --role cleaner --subject acme-cleaning)"

import { parseArgs } from "node:util";

import { create } from "@bufbuild/protobuf";
import { timestampFromDate, timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";

import { Code, ConnectError, connect, explain, mypage, notify, payment, reservation } from "@ssak3/client";

class BrokenPromise extends Error {}

function expect(condition: boolean, what: string): asserts condition {
  if (!condition) {
    throw new BrokenPromise(what);
  }
}

function step(label: string, text: string) {
  console.log(`${label.padEnd(6)} ${text}`);
}

const sleep = (ms: number) => new Promise<void>((done) => setTimeout(done, ms));

/** Polls `probe` until it returns something (the read side follows events). */
async function eventually<T>(what: string, probe: () => Promise<T | undefined>, seconds = 30): Promise<T> {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    const found = await probe();
    if (found !== undefined) {
      return found;
    }
    await sleep(200);
  }
  throw new BrokenPromise(`timed out waiting for ${what}`);
}

function daysAhead(days: number): Timestamp {
  return timestampFromDate(new Date(Date.now() + days * 86_400_000));
}

function micros(ts: Timestamp | undefined): bigint {
  expect(ts !== undefined, "a timestamp is missing");
  return ts.seconds * 1_000_000n + BigInt(Math.floor(ts.nanos / 1000));
}

/** All items of a list, one page of `pageSize` at a time. */
async function everyPage<T>(
  list: (pageToken: string) => Promise<{ items: T[]; nextPageToken: string }>,
): Promise<T[]> {
  const all: T[] = [];
  let pageToken = "";
  do {
    const page = await list(pageToken);
    all.push(...page.items);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return all;
}

/** What a watch sends before its deadline (the stream is then cut). */
async function watched<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  try {
    for await (const item of stream) {
      items.push(item);
    }
  } catch (error) {
    expect(ConnectError.from(error).code === Code.DeadlineExceeded, `watch failed: ${String(error)}`);
  }
  return items;
}

/** A watch read in the background, so that the story can go on meanwhile. */
class LiveWatch<T> {
  private readonly items: T[] = [];
  private readonly abort = new AbortController();

  constructor(open: (signal: AbortSignal) => AsyncIterable<T>) {
    void (async () => {
      try {
        for await (const item of open(this.abort.signal)) {
          this.items.push(item);
        }
      } catch {
        // Closed by close(), or the test fails on the missing item.
      }
    })();
  }

  async next(): Promise<T> {
    return eventually("an item on the watch", async () => this.items.shift());
  }

  close() {
    this.abort.abort();
  }
}

async function run(options: { host: string; basePort: number; company: string; customerToken: string; cleanerToken: string }) {
  const customer = connect({ token: options.customerToken, host: options.host, basePort: options.basePort });
  const company = connect({ token: options.cleanerToken, host: options.host, basePort: options.basePort });
  const statusName = (status: mypage.ReservationStatus) => mypage.ReservationStatus[status];

  // F1: book and pay in one call. The layer picks the request_id; sending
  // the same request again returns the same reservation.
  const booking = create(reservation.CreateReservationRequestSchema, {
    cleanerId: options.company,
    address: "12 Gangnam-daero, Seoul",
    scheduledAt: daysAhead(3),
    serviceType: reservation.ServiceType.DEEP,
  });
  const first = await customer.reservations.createReservation(booking);
  expect(first.state === reservation.ReservationState.CONFIRMED, `F1 state ${first.state}`);
  expect(first.price?.units === 90_000n && first.price.currencyCode === "KRW", "F1 price");
  expect(first.paymentId !== "", "F1 has no payment id");
  expect(booking.requestId !== "", "the layer set no request_id");
  const again = await customer.reservations.createReservation(booking);
  expect(again.reservationId === first.reservationId, "a repeated booking made another reservation");
  step("F1", `booked ${first.reservationId}: CONFIRMED, 90000 KRW, paid once`);

  // Bad input: INVALID_ARGUMENT with a BadRequest naming the field.
  const refused = await customer.reservations
    .createReservation({
      cleanerId: options.company,
      address: "   ",
      scheduledAt: daysAhead(1),
      serviceType: reservation.ServiceType.STANDARD,
    })
    .then(
      () => undefined,
      (error: unknown) => explain(error),
    );
  expect(refused !== undefined, "a booking without an address was accepted");
  expect(refused.code === Code.InvalidArgument, `bad input answered ${refused.code}`);
  expect(
    refused.fieldViolations.map((v) => v.field).join() === "address",
    `violations ${JSON.stringify(refused.fieldViolations)}`,
  );
  step("check", `bad input refused: ${refused.fieldViolations[0].field} ${refused.fieldViolations[0].description}`);

  // F4: the company is told, with the payment and reservation details.
  const notices = await eventually("the company's notification", async () => {
    const { notifications } = await company.notifications.listNotifications({});
    return notifications.length > 0 ? notifications : undefined;
  });
  const approvedFirst = notices[0];
  expect(approvedFirst.kind === notify.NotificationKind.PAYMENT_APPROVED, `F4 kind ${approvedFirst.kind}`);
  expect(approvedFirst.message.includes("90000 KRW paid by customer"), `F4 message ${approvedFirst.message}`);
  step("F4", `company told: ${approvedFirst.message}`);

  // The company watches from the last notification it has seen.
  const watch = new LiveWatch((signal) =>
    company.notifications.watchNotifications(
      { resumePoint: { case: "afterNotificationId", value: approvedFirst.notificationId } },
      { signal },
    ),
  );

  // F5: my page shows it paid.
  const page = (reservationId: string, status: mypage.ReservationStatus) =>
    eventually(`my page to show ${statusName(status)}`, async () => {
      try {
        const view = await customer.myPage.getMyReservation({ reservationId });
        return view.status === status ? view : undefined;
      } catch (error) {
        expect(ConnectError.from(error).code === Code.NotFound, `my page: ${String(error)}`);
        return undefined;
      }
    });
  let view = await page(first.reservationId, mypage.ReservationStatus.PAID);
  step("F5", `my page: ${statusName(view.status)}`);

  // A second booking, scheduled sooner; the company's watch sees it live.
  const second = await customer.reservations.createReservation({
    cleanerId: options.company,
    address: "1 Sejong-daero, Seoul",
    scheduledAt: daysAhead(2),
    serviceType: reservation.ServiceType.STANDARD,
  });
  expect(second.state === reservation.ReservationState.CONFIRMED, `second state ${second.state}`);
  const approvedSecond = await watch.next();
  expect(approvedSecond.reservationId === second.reservationId, "the watch sent another notification");
  expect(approvedSecond.kind === notify.NotificationKind.PAYMENT_APPROVED, "the watch sent another kind");
  watch.close();
  step("F4", `company watch, live: ${approvedSecond.message}`);

  // F2: the company lists its jobs, soonest first (one per page), and
  // completes the first booking.
  const jobs = await everyPage(async (pageToken) => {
    const { jobs, nextPageToken } = await company.cleaning.listJobs({ pageSize: 1, pageToken });
    return { items: jobs, nextPageToken };
  });
  expect(
    jobs.map((j) => j.reservationId).join() === [second.reservationId, first.reservationId].join(),
    "ListJobs is not soonest scheduled first",
  );
  const cleaned = await company.cleaning.completeCleaning({ reservationId: first.reservationId });
  expect(cleaned.state === reservation.ReservationState.CLEANED, `F2 state ${cleaned.state}`);
  step("F2", "jobs listed soonest first; the first one marked CLEANED");

  // F3: the customer is told; my page shows CLEANED with its history.
  const told = await eventually("the customer's notification", async () => {
    const { notifications } = await customer.notifications.listNotifications({});
    return notifications.find((n) => n.kind === notify.NotificationKind.CLEANING_COMPLETED);
  });
  expect(told.reservationId === first.reservationId, "F3 is about another reservation");
  view = await page(first.reservationId, mypage.ReservationStatus.CLEANED);
  let history = view.history.map((h) => statusName(h.status));
  expect(history.join() === "PAID,CLEANED", `F3 history ${history.join()}`);
  step("F3", `customer told: ${told.message}`);

  // F6: the customer cancels the second booking.
  const cancelled = await customer.reservations.cancelReservation({ reservationId: second.reservationId });
  expect(cancelled.state === reservation.ReservationState.CANCELLED, `F6 state ${cancelled.state}`);
  step("F6", "second booking CANCELLED");

  // F7: its payment is cancelled, the money refunded.
  const refund = await eventually("the refund", async () => {
    const paid = await customer.payments.getPayment({
      lookup: { case: "reservationId", value: second.reservationId },
    });
    return paid.state === payment.PaymentState.CANCELLED ? paid : undefined;
  });
  expect(refund.amount?.units === 50_000n, "F7 amount");
  step("F7", "payment CANCELLED, 50000 KRW refunded");

  // F8: the company resumes its watch after the last notification it got:
  // the cancellation, sent while it was away, comes first and only once.
  const resumed = await watched(
    company.notifications.watchNotifications(
      { resumePoint: { case: "afterNotificationId", value: approvedSecond.notificationId } },
      { timeoutMs: 3000 },
    ),
  );
  expect(resumed.length === 1, `the resumed watch sent ${resumed.length} notifications`);
  expect(resumed[0].kind === notify.NotificationKind.PAYMENT_CANCELLED, `F8 kind ${resumed[0].kind}`);
  expect(resumed[0].message.includes("50000 KRW refunded to customer"), `F8 message ${resumed[0].message}`);
  step("F8", `company watch, resumed: ${resumed[0].message}`);
  view = await page(second.reservationId, mypage.ReservationStatus.REFUNDED);
  history = view.history.map((h) => statusName(h.status));
  expect(history.join() === "PAID,CANCELLED,REFUNDED", `F8 history ${history.join()}`);
  step("F5", `my page: ${history.join(" -> ")}`);

  // Every list in its documented order, one item per page.
  const listed = await everyPage(async (pageToken) => {
    const { notifications, nextPageToken } = await company.notifications.listNotifications({ pageSize: 1, pageToken });
    return { items: notifications, nextPageToken };
  });
  expect(
    listed.map((n) => n.notificationId).join() ===
      [resumed[0].notificationId, approvedSecond.notificationId, approvedFirst.notificationId].join(),
    "ListNotifications is not newest first",
  );
  const times = listed.map((n) => micros(n.createTime));
  expect(times[0] > times[1] && times[1] > times[2], "create_time is not strictly newest first");
  const views = await everyPage(async (pageToken) => {
    const { reservations, nextPageToken } = await customer.myPage.listMyReservations({ pageSize: 1, pageToken });
    return { items: reservations, nextPageToken };
  });
  expect(
    views.map((v) => v.reservationId).join() === [second.reservationId, first.reservationId].join(),
    "ListMyReservations is not newest booking first",
  );
  step("order", "notifications and my page newest first, jobs soonest first, across pages");

  // A watch from the oldest notification replays the rest, oldest first, once.
  const replayed = await watched(
    company.notifications.watchNotifications(
      { resumePoint: { case: "afterNotificationId", value: listed[2].notificationId } },
      { timeoutMs: 3000 },
    ),
  );
  expect(
    replayed.map((n) => n.notificationId).join() === [listed[1].notificationId, listed[0].notificationId].join(),
    "the replay is not the notifications after the resume point, oldest first",
  );
  const oldest = views.reduce((a, b) => (timestampMs(a.updateTime!) <= timestampMs(b.updateTime!) ? a : b));
  const pages = await watched(
    customer.myPage.watchMyReservations({ afterUpdateTime: oldest.updateTime }, { timeoutMs: 3000 }),
  );
  expect(
    pages.map((v) => v.reservationId).join() ===
      views
        .filter((v) => v !== oldest)
        .map((v) => v.reservationId)
        .join(),
    "my page's replay is not the views changed after the resume point",
  );
  step("resume", "watches replay exactly what came after their resume point");
}

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    "base-port": { type: "string", default: "50051" },
    company: { type: "string", default: "acme-cleaning" },
    "customer-token": { type: "string" },
    "cleaner-token": { type: "string" },
  },
});
if (values["customer-token"] === undefined || values["cleaner-token"] === undefined) {
  console.error("--customer-token and --cleaner-token are required");
  process.exit(2);
}
try {
  await run({
    host: values.host,
    basePort: Number(values["base-port"]),
    company: values.company,
    customerToken: values["customer-token"],
    cleanerToken: values["cleaner-token"],
  });
  console.log("the whole story held");
} catch (error) {
  console.error(`FAILED: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
}
