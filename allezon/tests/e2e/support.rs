//! Starting and stopping the real binary, and a reference model of profiles.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running `allezon` process.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    /// The admin port's base URL, for a binary started here.
    pub admin: Option<String>,
    /// The gRPC address (`host:port`), for a binary started here.
    pub grpc: Option<String>,
}

impl Server {
    /// Starts the binary on free ports with `data_dir`, and waits until it
    /// prints where it listens.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with_env(data_dir, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(data_dir: &Path, env: &[(&str, String)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_allezon"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start allezon");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name))
                .map(str::to_owned)
        };
        let Some(http) = field("http=") else {
            let mut stderr = String::new();
            let _ = child.kill();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut stderr);
            panic!("allezon did not start: {line:?}\n{stderr}");
        };
        Server {
            base: format!("http://{http}"),
            admin: field("admin=").map(|a| format!("http://{a}")),
            grpc: field("grpc="),
            child: Some(child),
        }
    }

    /// A process started elsewhere that serves the REST API at `base`.
    pub fn attach(child: Child, base: String) -> Server {
        Server {
            child: Some(child),
            base,
            admin: None,
            grpc: None,
        }
    }

    /// A server running inside the test process (`allezon::start`), which
    /// the test itself stops.
    pub fn in_process(base: String) -> Server {
        Server {
            child: None,
            base,
            admin: None,
            grpc: None,
        }
    }

    /// SIGTERM, then waits for the process to shut down in order.
    pub fn terminate(mut self) {
        let mut child = self.child.take().expect("a process of its own");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let exited = child.wait().expect("reap");
        assert!(exited.success(), "allezon exited with {exited}");
    }

    /// `kill -9`: no shutdown hook runs, nothing is flushed.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("a process of its own");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tool the test script installs (`promtool`, `grpcurl`): found on the
/// PATH, or the test fails saying how to get it. Never a silent skip.
pub fn tool(name: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{name} is not on the PATH; ./scripts/test.sh installs it"))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// `2022-03-01T00:00:00.000Z` plus `ms`, in the contract's format; whole
/// seconds are written without the fraction, as real clients do.
pub fn tag_time(ms: i64) -> String {
    let base = 1_646_092_800_000i64 + ms;
    let secs = base / 1000;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let day = 1 + (secs - 1_646_092_800) / 86_400;
    if base % 1000 == 0 {
        format!("2022-03-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("2022-03-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z", base % 1000)
    }
}

/// The same instant as a query-string datetime, millisecond precision.
pub fn query_time(ms: i64) -> String {
    let t = tag_time(ms);
    let t = t.trim_end_matches('Z');
    if t.len() == 19 {
        format!("{t}.000")
    } else {
        t.to_owned()
    }
}

/// A deterministic tag; `product_id` alternates between number and string.
pub fn tag(cookie: &str, action: &str, ms: i64, n: i64) -> Value {
    let device = ["PC", "MOBILE", "TV"][(n % 3) as usize];
    let product_id = if n % 2 == 0 {
        json!(n)
    } else {
        json!(format!("p{n}"))
    };
    json!({
        "time": tag_time(ms),
        "cookie": cookie,
        "country": "PL",
        "device": device,
        "action": action,
        "origin": format!("CAMPAIGN_{}", n % 7),
        "product_info": {
            "product_id": product_id,
            "brand_id": format!("brand_{}", n % 5),
            "category_id": format!("cat_{}", n % 3),
            "price": (n * 7919 % 100_000) as i32 - 50_000,
        }
    })
}

/// The tag as the server gives it back: time in millisecond form.
pub fn normalised(tag: &Value) -> Value {
    let mut tag = tag.clone();
    let time = tag["time"].as_str().expect("time").to_owned();
    if time.len() == 20 {
        tag["time"] = json!(format!("{}.000Z", &time[..19]));
    }
    tag
}

/// Reference model: the expected profile of `cookie` given every tag it was
/// sent (as `(time_ms, tag)`), per the contract's rules.
pub fn expected_profile(
    cookie: &str,
    tags: &[(i64, Value)],
    from: i64,
    to: i64,
    limit: usize,
) -> Value {
    let list = |action: &str| {
        let mut of_action: Vec<&(i64, Value)> =
            tags.iter().filter(|(_, t)| t["action"] == action).collect();
        of_action.sort_by_key(|t| std::cmp::Reverse(t.0));
        of_action
            .into_iter()
            .take(200)
            .filter(|(ms, _)| from <= *ms && *ms < to)
            .take(limit)
            .map(|(_, t)| normalised(t))
            .collect::<Vec<_>>()
    };
    json!({ "cookie": cookie, "views": list("VIEW"), "buys": list("BUY") })
}

pub async fn post_tag(
    client: &reqwest::Client,
    server: &Server,
    tag: &Value,
) -> reqwest::StatusCode {
    client
        .post(server.url("/user_tags"))
        .json(tag)
        .send()
        .await
        .expect("send tag")
        .status()
}

/// Posts `tag` until it is accepted, as a client honouring `Retry-After`
/// does: a 503 (the gateway refusing tags while the workers catch up, or in
/// an outage) is tried again a second later; any other status fails.
pub async fn post_tag_until_accepted(client: &reqwest::Client, server: &Server, tag: &Value) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = post_tag(client, server, tag).await;
        if status == 204 {
            return;
        }
        assert_eq!(status, 503, "{tag}");
        assert!(Instant::now() < deadline, "refused for 120 s: {tag}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Asserts that each cookie's profile over `[from, to)` is exactly what
/// `tags` (with their event times in ms) make it.
pub async fn assert_profiles_exact(
    client: &reqwest::Client,
    server: &Server,
    cookies: impl IntoIterator<Item = String>,
    tags: &[(i64, Value)],
    (from, to): (i64, i64),
) {
    for cookie in cookies {
        let of_cookie: Vec<(i64, Value)> = tags
            .iter()
            .filter(|(_, t)| t["cookie"] == cookie.as_str())
            .cloned()
            .collect();
        let got = profile(client, server, &cookie, from, to, None).await;
        assert_eq!(got, expected_profile(&cookie, &of_cookie, from, to, 200));
    }
}

pub async fn profile(
    client: &reqwest::Client,
    server: &Server,
    cookie: &str,
    from: i64,
    to: i64,
    limit: Option<usize>,
) -> Value {
    let mut url = server.url(&format!(
        "/user_profiles/{cookie}?time_range={}_{}",
        query_time(from),
        query_time(to)
    ));
    if let Some(limit) = limit {
        url.push_str(&format!("&limit={limit}"));
    }
    let response = client.post(url).send().await.expect("profile query");
    assert_eq!(response.status(), 200);
    response.json().await.expect("profile json")
}

/// Polls `get` until it returns `want`; on timeout, fails showing the last
/// answer next to the expected one, so a failure says what was missing.
pub async fn eventually_equal<F, Fut>(within: Duration, want: &Value, mut get: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = Instant::now() + within;
    loop {
        let got = get().await;
        if got == *want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not equal within {within:?}:\n got: {got}\nwant: {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (60 s at most) until the admin port `admin` answers `/readyz` 200.
pub async fn wait_ready(client: &reqwest::Client, admin: u16) {
    eventually(Duration::from_secs(60), || async move {
        let url = format!("http://127.0.0.1:{admin}/readyz");
        matches!(client.get(url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
}

/// Retries `check` until it passes or `within` runs out; never a bare sleep.
pub async fn eventually<F, Fut>(within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
