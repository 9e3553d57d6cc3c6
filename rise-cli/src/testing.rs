//! Test support: a canned HTTP server on 127.0.0.1 standing in for the backend or the identity
//! provider, so unit tests can feed the client any reply (including hostile ones).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One canned answer: requests whose request line starts with `prefix` (`"GET /auth/whoami"`)
/// get `status`, the extra `headers` and the JSON `body`; in the body and the header values
/// `{base}` stands for the server's own URL.
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

pub fn route(prefix: &str, status: u16, body: &str) -> Route {
    Route {
        prefix: prefix.to_owned(),
        status,
        body: body.to_owned(),
        headers: Vec::new(),
    }
}

impl Route {
    /// The same answer with one more response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A server answering from its routes (404 otherwise), one request per connection, until the
/// test process ends.
pub struct FakeServer {
    pub url: String,
    /// Request heads (request line and headers) in the order received.
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeServer {
    pub fn start(routes: Vec<Route>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let base = url.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let head = read_request(&mut stream);
                let line = head.lines().next().unwrap_or_default().to_owned();
                let (status, body, headers) = routes
                    .iter()
                    .find(|r| line.starts_with(&r.prefix))
                    .map(|r| {
                        let headers: String = r
                            .headers
                            .iter()
                            .map(|(k, v)| format!("{k}: {}\r\n", v.replace("{base}", &base)))
                            .collect();
                        (r.status, r.body.replace("{base}", &base), headers)
                    })
                    .unwrap_or((404, String::new(), String::new()));
                seen.lock().expect("lock").push(head);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Self { url, requests }
    }

    /// The request lines received so far.
    pub fn requests(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|h| h.lines().next().unwrap_or_default().to_owned())
            .collect()
    }

    /// The request heads (request line and headers) received so far.
    pub fn heads(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

/// The request head, and the body as far as Content-Length says (so the client sees no reset).
fn read_request(stream: &mut std::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).into_owned(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut have = buf.len() - end;
    while have < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    head
}

/// A `/registry/credentials` reply whose credential expires in `expires_in` seconds.
pub fn credentials_body(registry_url: &str, expires_in: u64) -> String {
    serde_json::json!({
        "credentials": {
            "registry_url": registry_url,
            "username": "rise",
            "password": "s3cret-password",
            "expires_in": expires_in,
        },
        "repository": "my-app",
        "project": "my-app",
    })
    .to_string()
}
