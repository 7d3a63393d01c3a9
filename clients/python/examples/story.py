"""The whole Ssak3 story (F1-F8) as a partner's Python app runs it.

A customer books and pays, the company is told and sees its jobs in order,
cleans, the customer is told; a second booking is cancelled and refunded and
the company is told while its watch was disconnected, which it resumes
without missing anything. Every step checks what the API promises and the
script exits non-zero at the first broken promise.

    python examples/story.py --base-port 50051 \\
        --customer-token "$(ssak3 token --role customer --subject alice)" \\
        --cleaner-token "$(ssak3 token --role cleaner --subject acme-cleaning)"
"""

import argparse
import queue
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ssak3.mypage.v1 import mypage_pb2 as mypage
from ssak3.notify.v1 import notify_pb2 as notify
from ssak3.payment.v1 import payment_pb2 as payment
from ssak3.reservation.v1 import reservation_pb2 as reservation
from ssak3_client import ApiError, Client


class BrokenPromise(Exception):
    pass


def expect(condition, what):
    if not condition:
        raise BrokenPromise(what)


def step(label, text):
    print(f"{label:<6} {text}", flush=True)


def eventually(what, probe, seconds=30):
    """Polls `probe` until it returns something (the read side follows events)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise BrokenPromise(f"timed out waiting for {what}")


def days_ahead(days):
    at = Timestamp()
    at.FromDatetime(datetime.now(timezone.utc) + timedelta(days=days))
    return at


def micros(ts):
    return ts.seconds * 1_000_000 + ts.nanos // 1_000


def every_page(call, request, field):
    """All items of a list, page by page (page_size must be set)."""
    items = []
    while True:
        page = call(request)
        items.extend(getattr(page, field))
        if not page.next_page_token:
            return items
        request.page_token = page.next_page_token


def watched(stream, seconds):
    """What a watch sends within `seconds` (the stream is then cut)."""
    items = []
    try:
        for item in stream:
            items.append(item)
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"watch failed: {error}")
    return items


class LiveWatch:
    """A watch read on a thread, so that the story can go on meanwhile."""

    def __init__(self, stream):
        self.stream = stream
        self.items = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for item in self.stream:
                self.items.put(item)
        except grpc.RpcError:
            pass

    def next(self, seconds=30):
        try:
            return self.items.get(timeout=seconds)
        except queue.Empty:
            raise BrokenPromise("nothing arrived on the watch") from None

    def close(self):
        self.stream.cancel()


def run(args):
    customer = Client(args.customer_token, host=args.host, base_port=args.base_port)
    company = Client(args.cleaner_token, host=args.host, base_port=args.base_port)
    status_name = mypage.ReservationStatus.Name

    # F1: book and pay in one call. The layer picks the request_id; sending
    # the same request again returns the same reservation.
    booking = reservation.CreateReservationRequest(
        cleaner_id=args.company,
        address="12 Gangnam-daero, Seoul",
        scheduled_at=days_ahead(3),
        service_type=reservation.SERVICE_TYPE_DEEP,
    )
    first = customer.reservations.CreateReservation(booking)
    expect(first.state == reservation.RESERVATION_STATE_CONFIRMED, f"F1 state {first.state}")
    expect((first.price.units, first.price.currency_code) == (90000, "KRW"), f"F1 price {first.price}")
    expect(first.payment_id != "", "F1 has no payment id")
    expect(booking.request_id != "", "the layer set no request_id")
    again = customer.reservations.CreateReservation(booking)
    expect(again.reservation_id == first.reservation_id, "a repeated booking made another reservation")
    step("F1", f"booked {first.reservation_id}: CONFIRMED, 90000 KRW, paid once")

    # Bad input: INVALID_ARGUMENT with a BadRequest naming the field.
    try:
        customer.reservations.CreateReservation(
            reservation.CreateReservationRequest(
                cleaner_id=args.company,
                address="   ",
                scheduled_at=days_ahead(1),
                service_type=reservation.SERVICE_TYPE_STANDARD,
            )
        )
        raise BrokenPromise("a booking without an address was accepted")
    except grpc.RpcError as error:
        problem = ApiError.of(error)
        expect(problem.code == grpc.StatusCode.INVALID_ARGUMENT, f"bad input answered {problem.code}")
        expect([v.field for v in problem.field_violations] == ["address"], f"violations {problem.field_violations}")
    step("check", f"bad input refused: {problem.field_violations[0].field} {problem.field_violations[0].description}")

    # F4: the company is told, with the payment and reservation details.
    def company_notices():
        return list(company.notifications.ListNotifications(notify.ListNotificationsRequest()).notifications)

    notices = eventually("the company's notification", company_notices)
    approved_first = notices[0]
    expect(approved_first.kind == notify.NOTIFICATION_KIND_PAYMENT_APPROVED, f"F4 kind {approved_first.kind}")
    expect("90000 KRW paid by customer" in approved_first.message, f"F4 message {approved_first.message}")
    step("F4", f"company told: {approved_first.message}")

    # The company watches from the last notification it has seen.
    watch = LiveWatch(
        company.notifications.WatchNotifications(
            notify.WatchNotificationsRequest(after_notification_id=approved_first.notification_id)
        )
    )

    # F5: my page shows it paid.
    def page(reservation_id, status):
        def probe():
            try:
                view = customer.my_page.GetMyReservation(
                    mypage.GetMyReservationRequest(reservation_id=reservation_id)
                )
            except grpc.RpcError as error:
                expect(error.code() == grpc.StatusCode.NOT_FOUND, f"my page: {error}")
                return None
            return view if view.status == status else None

        return eventually(f"my page to show {status_name(status)}", probe)

    view = page(first.reservation_id, mypage.RESERVATION_STATUS_PAID)
    step("F5", f"my page: {status_name(view.status)}")

    # A second booking, scheduled sooner; the company's watch sees it live.
    second = customer.reservations.CreateReservation(
        reservation.CreateReservationRequest(
            cleaner_id=args.company,
            address="1 Sejong-daero, Seoul",
            scheduled_at=days_ahead(2),
            service_type=reservation.SERVICE_TYPE_STANDARD,
        )
    )
    expect(second.state == reservation.RESERVATION_STATE_CONFIRMED, f"second state {second.state}")
    approved_second = watch.next()
    expect(approved_second.reservation_id == second.reservation_id, "the watch sent another notification")
    expect(approved_second.kind == notify.NOTIFICATION_KIND_PAYMENT_APPROVED, "the watch sent another kind")
    watch.close()
    step("F4", f"company watch, live: {approved_second.message}")

    # F2: the company lists its jobs, soonest first (one per page), and
    # completes the first booking.
    jobs = every_page(company.cleaning.ListJobs, reservation.ListJobsRequest(page_size=1), "jobs")
    expect(
        [j.reservation_id for j in jobs] == [second.reservation_id, first.reservation_id],
        "ListJobs is not soonest scheduled first",
    )
    cleaned = company.cleaning.CompleteCleaning(
        reservation.CompleteCleaningRequest(reservation_id=first.reservation_id)
    )
    expect(cleaned.state == reservation.RESERVATION_STATE_CLEANED, f"F2 state {cleaned.state}")
    step("F2", "jobs listed soonest first; the first one marked CLEANED")

    # F3: the customer is told; my page shows CLEANED with its history.
    told = eventually(
        "the customer's notification",
        lambda: [
            n
            for n in customer.notifications.ListNotifications(notify.ListNotificationsRequest()).notifications
            if n.kind == notify.NOTIFICATION_KIND_CLEANING_COMPLETED
        ],
    )
    expect(told[0].reservation_id == first.reservation_id, "F3 is about another reservation")
    view = page(first.reservation_id, mypage.RESERVATION_STATUS_CLEANED)
    history = [status_name(h.status) for h in view.history]
    expect(history == ["RESERVATION_STATUS_PAID", "RESERVATION_STATUS_CLEANED"], f"F3 history {history}")
    step("F3", f"customer told: {told[0].message}")

    # F6: the customer cancels the second booking.
    cancelled = customer.reservations.CancelReservation(
        reservation.CancelReservationRequest(reservation_id=second.reservation_id)
    )
    expect(cancelled.state == reservation.RESERVATION_STATE_CANCELLED, f"F6 state {cancelled.state}")
    step("F6", "second booking CANCELLED")

    # F7: its payment is cancelled, the money refunded.
    def refunded():
        paid = customer.payments.GetPayment(payment.GetPaymentRequest(reservation_id=second.reservation_id))
        return paid if paid.state == payment.PAYMENT_STATE_CANCELLED else None

    refund = eventually("the refund", refunded)
    expect(refund.amount.units == 50000, f"F7 amount {refund.amount}")
    step("F7", "payment CANCELLED, 50000 KRW refunded")

    # F8: the company resumes its watch after the last notification it got:
    # the cancellation, sent while it was away, comes first and only once.
    resumed = watched(
        company.notifications.WatchNotifications(
            notify.WatchNotificationsRequest(after_notification_id=approved_second.notification_id),
            timeout=3,
        ),
        3,
    )
    expect(len(resumed) == 1, f"the resumed watch sent {len(resumed)} notifications")
    expect(resumed[0].kind == notify.NOTIFICATION_KIND_PAYMENT_CANCELLED, f"F8 kind {resumed[0].kind}")
    expect("50000 KRW refunded to customer" in resumed[0].message, f"F8 message {resumed[0].message}")
    step("F8", f"company watch, resumed: {resumed[0].message}")
    view = page(second.reservation_id, mypage.RESERVATION_STATUS_REFUNDED)
    history = [status_name(h.status) for h in view.history]
    expect(
        history == ["RESERVATION_STATUS_PAID", "RESERVATION_STATUS_CANCELLED", "RESERVATION_STATUS_REFUNDED"],
        f"F8 history {history}",
    )
    step("F5", f"my page: {' -> '.join(history)}")

    # Every list in its documented order, one item per page.
    listed = every_page(
        company.notifications.ListNotifications, notify.ListNotificationsRequest(page_size=1), "notifications"
    )
    expect(
        [n.notification_id for n in listed]
        == [resumed[0].notification_id, approved_second.notification_id, approved_first.notification_id],
        "ListNotifications is not newest first",
    )
    times = [micros(n.create_time) for n in listed]
    expect(times == sorted(times, reverse=True) and len(set(times)) == 3, f"create_time order {times}")
    views = every_page(
        customer.my_page.ListMyReservations, mypage.ListMyReservationsRequest(page_size=1), "reservations"
    )
    expect(
        [v.reservation_id for v in views] == [second.reservation_id, first.reservation_id],
        "ListMyReservations is not newest booking first",
    )
    step("order", "notifications and my page newest first, jobs soonest first, across pages")

    # A watch from the oldest notification replays the rest, oldest first, once.
    replayed = watched(
        company.notifications.WatchNotifications(
            notify.WatchNotificationsRequest(after_notification_id=listed[-1].notification_id),
            timeout=3,
        ),
        3,
    )
    expect(
        [n.notification_id for n in replayed] == [n.notification_id for n in reversed(listed[:-1])],
        "the replay is not the notifications after the resume point, oldest first",
    )
    oldest_view = min(views, key=lambda v: micros(v.update_time))
    pages = watched(
        customer.my_page.WatchMyReservations(
            mypage.WatchMyReservationsRequest(after_update_time=oldest_view.update_time), timeout=3
        ),
        3,
    )
    expect(
        [v.reservation_id for v in pages] == [v.reservation_id for v in views if v is not oldest_view],
        "my page's replay is not the views changed after the resume point",
    )
    step("resume", "watches replay exactly what came after their resume point")

    customer.close()
    company.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--base-port", type=int, default=50051)
    parser.add_argument("--company", default="acme-cleaning")
    parser.add_argument("--customer-token", required=True)
    parser.add_argument("--cleaner-token", required=True)
    args = parser.parse_args()
    try:
        run(args)
    except (BrokenPromise, grpc.RpcError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    print("the whole story held", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
