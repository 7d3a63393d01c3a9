//! Hostile traffic against a real `ssak3 up`, loopback only and bounded in
//! count and time: floods of idle connections, made-up and malicious paths,
//! garbage and oversize requests, stream floods, text that hides what it
//! says, write floods. The process keeps serving a well-behaved client
//! (from another loopback address) throughout.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    time::Duration,
};

use bytes::Bytes;
use prost::Message as _;
use ssak3_common::{
    auth::{Role, signing::DevelopmentKeys},
    server::free_consecutive_ports,
};
use ssak3_proto::{
    codec::RawCodec,
    mypage::v1 as mypage,
    notify::v1::{self as notify, notification_service_client::NotificationServiceClient},
    reservation::v1::{self as reservation, reservation_service_client::ReservationServiceClient},
};
use tokio::{io::AsyncReadExt as _, net::TcpStream};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt as _;

use crate::{
    system::{COMPANY, CUSTOMER},
    up::Up,
};

/// The well-behaved client comes from another loopback address than the flood.
const GOOD: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a URL")
        .local_address(Some(GOOD))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("the well-behaved client connects")
}

fn signed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request =
        ssak3_common::auth::with_bearer(tonic::Request::new(message), token).expect("metadata");
    request.set_timeout(Duration::from_secs(2));
    request
}

fn booking(request_id: &str, address: &str) -> reservation::CreateReservationRequest {
    reservation::CreateReservationRequest {
        request_id: request_id.into(),
        cleaner_id: COMPANY.into(),
        address: address.into(),
        scheduled_at: Some(ssak3_common::time::to_timestamp(
            ssak3_common::time::now() + chrono::TimeDelta::days(2),
        )),
        service_type: reservation::ServiceType::Standard as i32,
        note: String::new(),
    }
}

/// Calls `path` with raw bytes; the status it answers.
async fn raw_call(addr: SocketAddr, path: &str, token: &str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.expect("ready");
    grpc.unary(
        signed(token, Bytes::from(body)),
        path.parse().expect("a path"),
        RawCodec,
    )
    .await
    .map(drop)
    .err()
    .unwrap_or_else(|| tonic::Status::ok(""))
}

/// Which of `streams` the server closed within `within`.
async fn closed(streams: &mut [TcpStream], within: Duration) -> Vec<bool> {
    let reads = streams.iter_mut().map(|stream| async move {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(within, stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    });
    futures_util::future::join_all(reads).await
}

/// The metrics text parses with the reference Python parser of the format.
fn parses_as_prometheus_text(text: &str) -> Result<(), String> {
    let mut parser = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
             n = sum(len(f.samples) for f in text_string_to_metric_families(sys.stdin.read()))\n\
             print(n)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("python3 with prometheus-client is needed (scripts/test installs it): {e}")
        })?;
    parser
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let output = parser.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

async fn scrape(admin: SocketAddr) -> String {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = TcpStream::connect(admin).await.expect("the admin port");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .expect("written");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_holds_up_under_hostile_traffic() {
    let dir = tempfile::tempdir().expect("a directory");
    let base = free_consecutive_ports(4).expect("free ports");
    let up = Up::start_with(
        dir.path(),
        base,
        &[],
        &[
            // Long enough that opening the thousand connections below fits
            // in it while other tests load the machine.
            ("SSAK3_CONNECTIONS__FIRST_BYTE_TIMEOUT_MS", "4000"),
            ("SSAK3_CONNECTIONS__MAX_CONNECTIONS_PER_PEER", "300"),
            ("SSAK3_STREAMS__MAX_STREAMS", "20"),
            ("SSAK3_STREAMS__MAX_STREAMS_PER_SUBSCRIBER", "3"),
            ("SSAK3_RATE_LIMIT__PER_SECOND", "1"),
            ("SSAK3_RATE_LIMIT__BURST", "4"),
        ],
    )
    .await;
    let keys = DevelopmentKeys::load_or_create(&dir.path().join("data")).expect("keys");
    let token = |subject: &str, role| {
        keys.issuer
            .issue("ssak3", None, subject, role, Duration::from_secs(600))
            .expect("a token")
    };
    let customer = token(CUSTOMER, Role::Customer);
    let reservation_addr = up.addr(0);
    let admin = SocketAddr::new(reservation_addr.ip(), reservation_addr.port() + 1000);

    // 1. A thousand idle connections: a peer's share is capped, the rest are
    // closed at once, and a well-behaved client is served meanwhile.
    let mut idle = Vec::new();
    for _ in 0..1_000 {
        idle.push(
            TcpStream::connect(reservation_addr)
                .await
                .expect("a TCP connection"),
        );
    }
    let at_once = closed(&mut idle, Duration::from_millis(500)).await;
    let refused_at_once = at_once.iter().filter(|c| **c).count();
    assert!(
        (650..=700).contains(&refused_at_once),
        "{refused_at_once} of 1000 closed at once; the per-peer limit is 300"
    );
    let started = std::time::Instant::now();
    let booked = ReservationServiceClient::new(channel(reservation_addr).await)
        .create_reservation(signed(
            &customer,
            booking("during-the-flood", "77 Private-gil, Seoul"),
        ))
        .await
        .expect("a booking during the flood")
        .into_inner();
    assert_eq!(booked.state(), reservation::ReservationState::Confirmed);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let mut kept: Vec<TcpStream> = idle
        .into_iter()
        .zip(at_once)
        .filter_map(|(stream, closed)| (!closed).then_some(stream))
        .collect();
    let later = closed(&mut kept, Duration::from_secs(8)).await;
    assert!(
        later.iter().all(|c| *c),
        "{} silent connections outlived the first-byte timeout",
        later.iter().filter(|c| !**c).count()
    );

    // 2. Made-up and malicious paths add no series, and the scrape stays valid.
    for n in 0..300 {
        let path = match n % 3 {
            0 => format!("/random.Service{n}/Method{n}"),
            1 => "/a\"b/c".to_owned(),
            _ => "/x\",code=\"OK\",method=\"y/z".to_owned(),
        };
        let status = raw_call(reservation_addr, &path, &customer, Vec::new()).await;
        assert_eq!(status.code(), Code::Unimplemented, "{path}");
    }
    let text = scrape(admin).await;
    parses_as_prometheus_text(&text).expect("the scrape parses");
    let series = text
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{"))
        .count();
    assert!(series <= 6, "{series} series after made-up paths:\n{text}");
    assert!(text.contains(r#"grpc_service="unknown""#));
    assert!(!text.contains("Method1"), "a made-up path became a label");

    // 3. Garbage is the caller's mistake, not an internal error.
    let create = "/ssak3.reservation.v1.ReservationService/CreateReservation";
    let wrong_wire_type = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
    let not_utf8 = vec![0x0a, 0x02, 0xff, 0xfe];
    for garbage in [wrong_wire_type, not_utf8] {
        let status = raw_call(reservation_addr, create, &customer, garbage).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }

    // 4. Oversize and hostile ids are refused briefly, never echoed.
    let page = "/ssak3.mypage.v1.MyPageService/GetMyReservation";
    let mypage_addr = up.addr(3);
    let huge = mypage::GetMyReservationRequest {
        reservation_id: "x".repeat(3 * 1024 * 1024),
    }
    .encode_to_vec();
    let status = raw_call(mypage_addr, page, &customer, huge).await;
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{:?}",
        status.code()
    );
    assert!(
        status.message().len() < 200,
        "{} bytes of message",
        status.message().len()
    );
    let long = "y".repeat(70);
    let status = raw_call(
        mypage_addr,
        page,
        &customer,
        mypage::GetMyReservationRequest {
            reservation_id: long.clone(),
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(!status.message().contains(&long));

    // 5. Text that hides what it says is refused, naming the field.
    let hidden = ReservationServiceClient::new(channel(reservation_addr).await)
        .create_reservation(signed(
            &customer,
            booking("bidi", "12 Gangnam\u{202E}oread-manggnaG 21"),
        ))
        .await
        .expect_err("a bidi override in an address");
    assert_eq!(hidden.code(), Code::InvalidArgument);
    assert!(hidden.message().contains("address"), "{}", hidden.message());

    // 6. Live streams are bounded per caller and in all.
    let mut notifications = NotificationServiceClient::new(channel(up.addr(2)).await);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            notifications
                .watch_notifications(signed(
                    &customer,
                    notify::WatchNotificationsRequest::default(),
                ))
                .await
                .expect("a stream within the caller's limit"),
        );
    }
    let fourth = notifications
        .watch_notifications(signed(
            &customer,
            notify::WatchNotificationsRequest::default(),
        ))
        .await
        .expect_err("a fourth stream of one caller");
    assert_eq!(fourth.code(), Code::ResourceExhausted);
    assert!(fourth.get_details_retry_info().is_some());
    let mut others = 0;
    let mut refused_in_all = None;
    for n in 0..40 {
        let watcher = token(&format!("watcher-{n}"), Role::Customer);
        match notifications
            .watch_notifications(signed(
                &watcher,
                notify::WatchNotificationsRequest::default(),
            ))
            .await
        {
            Ok(stream) => {
                others += 1;
                held.push(stream);
            }
            Err(status) => {
                refused_in_all = Some(status.code());
                break;
            }
        }
    }
    assert_eq!(others, 17, "the process limit is 20 streams");
    assert_eq!(refused_in_all, Some(Code::ResourceExhausted));
    drop(held);

    // 7. Writes are limited per caller, not for everyone.
    let mut reservations = ReservationServiceClient::new(channel(reservation_addr).await);
    let flooder = token("flooder", Role::Customer);
    let mut limited = None;
    for n in 0..8 {
        if let Err(status) = reservations
            .create_reservation(signed(
                &flooder,
                booking(&format!("flood-{n}"), "1 Sejong-daero"),
            ))
            .await
        {
            limited = Some(status);
            break;
        }
    }
    let limited = limited.expect("eight writes in a moment were all accepted");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!(limited.get_details_retry_info().is_some());
    reservations
        .create_reservation(signed(
            &token("patient", Role::Customer),
            booking("patient-1", "1 Sejong-daero"),
        ))
        .await
        .expect("another caller is not limited");

    // 8. Personal data stays out of the logs at INFO.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = up.log();
    assert!(
        logs.contains("notification"),
        "no notification was logged:\n{logs}"
    );
    let leaks: Vec<&str> = logs.lines().filter(|l| l.contains("Private-gil")).collect();
    assert!(
        leaks.is_empty(),
        "an address reached the logs:\n{}",
        leaks.join("\n")
    );
    up.interrupt();
}
