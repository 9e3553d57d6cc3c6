//! Reading HTTP response bodies with a size limit, so that a server (or whatever answers at its
//! address) cannot make the client buffer without end.
//!
//! Architecture invariant: every response body the client reads goes through [`read_bounded`]:
//! the backend's and the identity provider's with [`MAX_ANSWER_BYTES`], a registry's with the
//! limit of what is read (a token answer, a manifest).

use crate::backend::describe_reqwest;

/// The most of one answer from the backend or the identity provider that the client reads:
/// their JSON answers are a few KiB, an audit page a few hundred.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// It is longer than the limit (in bytes); the rest was not read.
    TooLarge(usize),
    /// It could not be read (connection lost, timeout).
    Read(reqwest::Error),
}

impl BodyError {
    /// A short reason, without the URL (the caller names the server): `it sent more than 1 MiB`.
    pub fn reason(&self) -> String {
        match self {
            BodyError::TooLarge(max) => format!("it sent more than {}", size(*max)),
            BodyError::Read(e) => describe_reqwest(e).to_owned(),
        }
    }
}

/// The body, unless it is longer than `max` bytes (refused by its `Content-Length` before any of
/// it is read, else as soon as more arrived) or cannot be read.
pub async fn read_bounded(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > max as u64)
    {
        return Err(BodyError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `1 MiB`, `64 KiB`, `100 bytes`: a limit as people read it.
fn size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    match bytes {
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;
    use std::net::TcpListener;

    /// A server that answers one request with `body_bytes` bytes, without a `Content-Length`
    /// (so only counting what arrives can stop the client), then closes the connection. The
    /// thread returns whether every byte was written: a client that hangs up early makes a
    /// write fail.
    fn unannounced_body(body_bytes: usize) -> (String, std::thread::JoinHandle<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}/", listener.local_addr().expect("local addr"));
        let server = std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return false;
            };
            let mut head = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut head);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < body_bytes {
                let n = chunk.len().min(body_bytes - sent);
                if stream.write_all(&chunk[..n]).is_err() {
                    return false;
                }
                sent += n;
            }
            true
        });
        (url, server)
    }

    #[tokio::test]
    async fn bodies_past_the_limit_are_not_read_to_the_end() {
        let http = reqwest::Client::new();
        // 64 MiB is far more than the loopback socket buffers hold: the server can only write
        // it all if the client reads it all.
        for (sent, max, fits) in [
            (MAX_ANSWER_BYTES, MAX_ANSWER_BYTES, true),
            (MAX_ANSWER_BYTES + 1, MAX_ANSWER_BYTES, false),
            (64 * MAX_ANSWER_BYTES, MAX_ANSWER_BYTES, false),
        ] {
            let (url, server) = unannounced_body(sent);
            let response = http.get(url).send().await.expect("response");
            match read_bounded(response, max).await {
                Ok(body) if fits => assert_eq!(body.len(), sent),
                Err(e @ BodyError::TooLarge(_)) if !fits => {
                    assert_eq!(e.reason(), "it sent more than 1 MiB");
                }
                other => panic!("{sent} bytes: {other:?}"),
            }
            let written_whole = tokio::task::spawn_blocking(move || server.join())
                .await
                .expect("join task")
                .expect("server thread");
            if sent == 64 * MAX_ANSWER_BYTES {
                assert!(!written_whole, "the client read all of a 64 MiB body");
            } else if fits {
                assert!(written_whole, "the server could not send {sent} bytes");
            }
        }
    }

    #[test]
    fn limits_read_as_people_write_them() {
        assert_eq!(size(MAX_ANSWER_BYTES), "1 MiB");
        assert_eq!(size(64 * 1024), "64 KiB");
        assert_eq!(size(1000), "1000 bytes");
    }
}
