//! The S3 API over HTTP: requests signed by `rusty-s3` (sans-IO: it only
//! makes signed URLs) and sent with `ureq` (blocking, pooled connections), so
//! the store stays free of an async runtime. Path-style addressing, which
//! self-hosted services (Garage, MinIO) expect. Transient failures (no
//! connection, timeouts, 5xx, 429) are retried with exponential backoff;
//! every error names the operation, bucket and key.

use super::{ErrorKind, ObjectError, ObjectInfo, ObjectStore, S3Location};
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::path::PathBuf;
use std::time::Duration;

/// How signed URLs stay valid: long enough for a slow upload to start.
const SIGN_FOR: Duration = Duration::from_secs(600);
const ATTEMPTS: u32 = 6;
/// Larger bodies are refused rather than buffered (a pack is tens of MiB).
const MAX_BODY: u64 = 1 << 30;

/// Endpoint, region and credentials, from the standard AWS variables and
/// files (docs/DESIGN.md §8).
#[derive(Clone)]
pub struct S3Config {
    pub endpoint: String,
    pub region: String,
    pub key_id: String,
    pub secret: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(
            f,
            "S3Config {{ endpoint: {}, region: {}, key_id: {} }}",
            self.endpoint, self.region, self.key_id
        )
    }
}

impl S3Config {
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (else AWS for the
    /// region), `AWS_REGION` or `AWS_DEFAULT_REGION` (else the profile's,
    /// else us-east-1), `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+
    /// `AWS_SESSION_TOKEN`), else the profile `AWS_PROFILE` (or `default`)
    /// of `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`) and
    /// `~/.aws/config` (`AWS_CONFIG_FILE`).
    pub fn from_env() -> Result<S3Config, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from).unwrap_or_default();
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let creds_file = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/credentials"));
        let config_file = var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/config"));
        let from_creds = |k: &str| ini_value(&creds_file, &profile, k);
        // ~/.aws/config names non-default profiles "profile NAME".
        let config_section = match profile.as_str() {
            "default" => "default".to_string(),
            p => format!("profile {p}"),
        };
        let from_config = |k: &str| ini_value(&config_file, &config_section, k);
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| from_config("region"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = var("AWS_ENDPOINT_URL_S3")
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .or_else(|| from_config("endpoint_url"))
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let (key_id, secret, session_token) =
            match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                (Some(k), Some(s)) => (k, s, var("AWS_SESSION_TOKEN")),
                _ => match (
                    from_creds("aws_access_key_id"),
                    from_creds("aws_secret_access_key"),
                ) {
                    (Some(k), Some(s)) => (k, s, from_creds("aws_session_token")),
                    _ => {
                        return Err(format!(
                            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                             or give profile [{profile}] keys in {}",
                            creds_file.display()
                        ))
                    }
                },
            };
        Ok(S3Config {
            endpoint,
            region,
            key_id,
            secret,
            session_token,
        })
    }
}

/// `key = value` from `[section]` of an INI file (the AWS files' format).
fn ini_value(path: &std::path::Path, section: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut in_section = false;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = name.trim() == section;
        } else if in_section {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

pub struct S3Objects {
    location: S3Location,
    bucket: Bucket,
    credentials: Credentials,
    agent: ureq::Agent,
}

impl S3Objects {
    pub fn new(location: S3Location, config: &S3Config) -> Result<S3Objects, String> {
        let endpoint = config
            .endpoint
            .parse()
            .map_err(|e| format!("endpoint {:?}: {e}", config.endpoint))?;
        let bucket = Bucket::new(
            endpoint,
            UrlStyle::Path,
            location.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| format!("endpoint {:?}: {e}", config.endpoint))?;
        let credentials = match &config.session_token {
            Some(t) => Credentials::new_with_token(&config.key_id, &config.secret, t),
            None => Credentials::new(&config.key_id, &config.secret),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .max_idle_connections_per_host(64)
            .build()
            .into();
        Ok(S3Objects {
            location,
            bucket,
            credentials,
            agent,
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.location.prefix)
    }

    fn what(&self, key: &str) -> String {
        format!("s3://{}/{}", self.location.bucket, self.full_key(key))
    }

    /// Sends one request, retrying what may pass on a second try. Returns
    /// the status and body of the first answer that is not transient.
    fn send(
        &self,
        op: &'static str,
        key: &str,
        req: Request,
    ) -> Result<(u16, Vec<u8>), ObjectError> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 << (attempt - 1)));
            }
            match self.send_once(&req) {
                Ok((status, body)) if status >= 500 || status == 429 => {
                    last = format!("HTTP {status}{}", s3_error_text(&body));
                }
                Ok(answer) => return Ok(answer),
                Err(e) => last = e,
            }
        }
        Err(ObjectError {
            op,
            what: self.what(key),
            kind: ErrorKind::Unavailable,
            detail: format!(
                "{last} (endpoint {}, {ATTEMPTS} attempts)",
                self.bucket.base_url()
            ),
        })
    }

    fn send_once(&self, req: &Request) -> Result<(u16, Vec<u8>), String> {
        let result = match req {
            Request::Get { url, range } => {
                let mut r = self.agent.get(url.as_str());
                if let Some((start, len)) = range {
                    r = r.header("range", format!("bytes={start}-{}", start + len - 1));
                }
                r.call()
            }
            Request::Put { url, body } => self.agent.put(url.as_str()).send(&body[..]),
            Request::PutFile { url, file, len } => {
                // Each attempt reads from the start (pread): retries resend all.
                let mut reader = FileFrom {
                    file,
                    pos: 0,
                    end: *len,
                };
                self.agent
                    .put(url.as_str())
                    .header("content-length", len.to_string())
                    .send(ureq::SendBody::from_reader(&mut reader))
            }
            Request::Delete { url } => self.agent.delete(url.as_str()).call(),
        };
        let resp = result.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| format!("reading the answer: {e}"))?;
        Ok((status, body))
    }

    /// Turns a non-2xx answer into an error naming what failed.
    fn refused(&self, op: &'static str, key: &str, status: u16, body: &[u8]) -> ObjectError {
        let text = s3_error_text(body);
        let (kind, detail) = match status {
            404 if text.contains("NoSuchBucket") => (
                ErrorKind::NotFound,
                format!("bucket {} does not exist{text}", self.location.bucket),
            ),
            404 => (ErrorKind::NotFound, format!("no such object{text}")),
            401 | 403 => (
                ErrorKind::Denied,
                format!("access denied (check the credentials){text}"),
            ),
            s => (ErrorKind::Other, format!("HTTP {s}{text}")),
        };
        ObjectError {
            op,
            what: self.what(key),
            kind,
            detail,
        }
    }
}

enum Request<'a> {
    Get {
        url: url::Url,
        range: Option<(u64, u64)>,
    },
    Put {
        url: url::Url,
        body: &'a [u8],
    },
    Delete {
        url: url::Url,
    },
    PutFile {
        url: url::Url,
        file: &'a std::fs::File,
        len: u64,
    },
}

/// The first `end` bytes of a file, read with pread from `pos`.
struct FileFrom<'a> {
    file: &'a std::fs::File,
    pos: u64,
    end: u64,
}

impl std::io::Read for FileFrom<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = buf.len().min((self.end - self.pos) as usize);
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// `: Code: Message` from an S3 error document, or nothing.
fn s3_error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let field = |tag: &str| {
        let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
        let end = text[start..].find(&format!("</{tag}>"))? + start;
        Some(text[start..end].chars().take(200).collect::<String>())
    };
    match (field("Code"), field("Message")) {
        (Some(c), Some(m)) => format!(" ({c}: {m})"),
        (Some(c), None) => format!(" ({c})"),
        _ => String::new(),
    }
}

impl ObjectStore for S3Objects {
    fn describe(&self) -> String {
        self.location.to_string()
    }

    fn check(&self) -> Result<(), ObjectError> {
        // A listing of one key proves the bucket exists and the keys may read
        // it (HEAD answers carry no error code to tell the two apart).
        let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
        action.with_max_keys(1);
        let url = action.sign(SIGN_FOR);
        let (status, body) = self.send("LIST", "", Request::Get { url, range: None })?;
        match status {
            200 => Ok(()),
            s => Err(self.refused("LIST", "", s, &body)),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), ObjectError> {
        let full = self.full_key(key);
        let url = self
            .bucket
            .put_object(Some(&self.credentials), &full)
            .sign(SIGN_FOR);
        match self.send("PUT", key, Request::Put { url, body: data })? {
            (200..=299, _) => Ok(()),
            (s, body) => Err(self.refused("PUT", key, s, &body)),
        }
    }

    fn put_file(&self, key: &str, file: &std::fs::File, len: u64) -> Result<(), ObjectError> {
        let full = self.full_key(key);
        let url = self
            .bucket
            .put_object(Some(&self.credentials), &full)
            .sign(SIGN_FOR);
        match self.send("PUT", key, Request::PutFile { url, file, len })? {
            (200..=299, _) => Ok(()),
            (s, body) => Err(self.refused("PUT", key, s, &body)),
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, ObjectError> {
        let full = self.full_key(key);
        let url = self
            .bucket
            .get_object(Some(&self.credentials), &full)
            .sign(SIGN_FOR);
        match self.send("GET", key, Request::Get { url, range: None })? {
            (200, body) => Ok(body),
            (s, body) => Err(self.refused("GET", key, s, &body)),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ObjectError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let full = self.full_key(key);
        let url = self
            .bucket
            .get_object(Some(&self.credentials), &full)
            .sign(SIGN_FOR);
        let range = Some((offset, len));
        match self.send("GET", key, Request::Get { url, range })? {
            (206, body) => Ok(body),
            // A service that ignores Range sends everything.
            (200, body) => {
                let start = (offset as usize).min(body.len());
                let end = start.saturating_add(len as usize).min(body.len());
                Ok(body[start..end].to_vec())
            }
            (416, _) => Ok(Vec::new()),
            (s, body) => Err(self.refused("GET", key, s, &body)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        let full = self.full_key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            action.with_prefix(full.as_str());
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGN_FOR);
            let (status, body) = self.send("LIST", prefix, Request::Get { url, range: None })?;
            if status != 200 {
                return Err(self.refused("LIST", prefix, status, &body));
            }
            let text = String::from_utf8_lossy(&body);
            let page = ListObjectsV2::parse_response(&text).map_err(|e| ObjectError {
                op: "LIST",
                what: self.what(prefix),
                kind: ErrorKind::Other,
                detail: format!("malformed listing: {e}"),
            })?;
            for o in page.contents {
                let Some(key) = o.key.strip_prefix(&self.location.prefix) else {
                    continue;
                };
                let modified = o
                    .last_modified
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(std::time::SystemTime::from);
                out.push(ObjectInfo {
                    key: key.to_string(),
                    size: o.size.unwrap_or(0),
                    modified,
                });
            }
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let full = self.full_key(key);
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), &full)
            .sign(SIGN_FOR);
        match self.send("DELETE", key, Request::Delete { url })? {
            (200..=299, _) | (404, _) => Ok(()),
            (s, body) => Err(self.refused("DELETE", key, s, &body)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_error_documents_are_summarised() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code>\
            <Message>Key not found</Message></Error>";
        assert_eq!(s3_error_text(body), " (NoSuchKey: Key not found)");
        assert_eq!(s3_error_text(b"garbage"), "");
    }

    #[test]
    fn profiles_come_from_ini_sections() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("credentials");
        std::fs::write(
            &p,
            "[default]\naws_access_key_id = A\n[other]\naws_access_key_id=B\n aws_secret_access_key = S \n",
        )
        .unwrap();
        assert_eq!(
            ini_value(&p, "default", "aws_access_key_id").as_deref(),
            Some("A")
        );
        assert_eq!(
            ini_value(&p, "other", "aws_access_key_id").as_deref(),
            Some("B")
        );
        assert_eq!(
            ini_value(&p, "other", "aws_secret_access_key").as_deref(),
            Some("S")
        );
        assert_eq!(ini_value(&p, "default", "aws_secret_access_key"), None);
    }
}
