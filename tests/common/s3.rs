//! A local S3-compatible server for the tests (moto's, started by `tools/s3-server.sh`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};

use super::{repo, wait_until};

/// The S3 server, killed when dropped.
pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// Starts a server with one bucket, `bucket`.
    pub fn start(log: &Path, bucket: &str) -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log_file = std::fs::File::create(log).unwrap();
        let child = Command::new("bash")
            .arg(repo().join("tools/s3-server.sh"))
            .arg(port.to_string())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start tools/s3-server.sh");
        let mut server = S3Server { child, port };
        // The first start installs the server's Python package.
        let up = wait_until(600, || {
            assert!(server.child.try_wait().unwrap().is_none(), "the S3 server exited: {}", std::fs::read_to_string(log).unwrap_or_default());
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "the S3 server did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
        server.put_bucket(bucket);
        server
    }

    /// Creates a bucket (a plain unsigned request: the server does not check signatures).
    pub fn put_bucket(&mut self, name: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket {name}: {reply}");
    }

    /// What the tests and every `gemma-batch` they start read credentials and the endpoint from.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

