//! `fake-bitrix24`: the fake portal as a program, for the demo in
//! `scripts/offline-demo.sh`. It prints its settings as `KEY=value` lines,
//! then takes commands on standard input, one a line:
//!
//! - `install APPLICATION_TOKEN HANDLER_URL`: posts ONAPPINSTALL (with
//!   fresh tokens) to the handler, as a portal does when an admin installs
//!   the application;
//! - `change EVENT ENTITY_ID`: queues an offline event for that change;
//! - `signal APPLICATION_TOKEN HANDLER_URL`: posts ONOFFLINEEVENT;
//! - `status`: prints the queue length and the calls answered.

use std::io::BufRead;

use fake_bitrix24::{FakeBitrix24, FakeConfig};

#[tokio::main]
async fn main() {
    let mut config = FakeConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                config.listen = args
                    .next()
                    .and_then(|a| a.parse().ok())
                    .expect("--listen takes an address such as 127.0.0.1:9090")
            }
            "--no-extended" => config.extended = false,
            other => panic!("unknown argument {other}; use --listen ADDR, --no-extended"),
        }
    }
    let fake = FakeBitrix24::start(config).await;
    println!("CLIENT_ID={}", fake.config().client_id);
    println!("CLIENT_SECRET={}", fake.config().client_secret);
    println!("OAUTH_SERVER={}", fake.oauth_server());
    println!("MEMBER_ID={}", fake.config().member_id);
    println!("DOMAIN={}", fake.domain());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let http = reqwest::Client::new();
    while let Some(line) = rx.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["install", token, url] | ["signal", token, url] => {
                let body = if words[0] == "install" {
                    fake.install_form(token)
                } else {
                    fake.offline_signal_form(token)
                };
                let answer = http
                    .post(*url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await;
                match answer {
                    Ok(r) => println!("{} -> {}", words[0], r.status()),
                    Err(e) => println!("{} failed: {e}", words[0]),
                }
            }
            ["change", event, id] => println!("queued {}", fake.change(event, id)),
            ["status"] => println!("queued={} calls={:?}", fake.queued(), fake.calls()),
            [] => {}
            _ => println!("unknown command: {line}"),
        }
    }
}
