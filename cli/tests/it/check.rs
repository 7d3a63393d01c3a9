//! `ssak3 check`, what `helm test` runs: every service healthy and listing
//! its own API by reflection; a wrong address or a service behind the wrong
//! name fails, naming it.

use ssak3_common::server::free_consecutive_ports;

use crate::{binary::ssak3, up::Up};

const NAMES: [&str; 4] = ["reservation", "payment", "notify", "mypage"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_serving_services_and_names_the_ones_that_fail() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let base = free_consecutive_ports(4).unwrap_or_else(|e| panic!("{e}"));
    let up = Up::start(dir.path(), base).await;
    let target = |name: &str, offset: u16| format!("{name}=127.0.0.1:{}", up.addr(offset).port());

    let all: Vec<String> = (0..4).map(|i| target(NAMES[i], i as u16)).collect();
    let output = ssak3()
        .arg("check")
        .args(&all)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", up.log());
    for (name, api) in NAMES.iter().zip([
        "ssak3.reservation.v1.ReservationService",
        "ssak3.payment.v1.PaymentService",
        "ssak3.notify.v1.NotificationService",
        "ssak3.mypage.v1.MyPageService",
    ]) {
        let line = stdout.lines().find(|l| l.starts_with(name)).unwrap_or("");
        assert!(line.contains("SERVING") && line.contains(api), "{stdout}");
    }

    // notify's name on mypage's port; payment where nothing listens.
    let closed = free_consecutive_ports(1).unwrap_or_else(|e| panic!("{e}"));
    let output = ssak3()
        .args([
            "check",
            &target("notify", 3),
            &format!("payment=127.0.0.1:{closed}"),
        ])
        .args(["--timeout-secs", "2"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("reflection lists no ssak3.notify.v1.* service"),
        "{stdout}"
    );
    assert!(stdout.contains("cannot connect to 127.0.0.1"), "{stdout}");
    assert!(
        stderr.contains("2 of 2 services failed the check: notify, payment"),
        "{stderr}"
    );
    up.interrupt();
}
