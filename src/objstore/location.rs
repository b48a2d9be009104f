//! `s3://BUCKET/PREFIX`: where a store lives on an object store.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Empty, or ends with `/`.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://BUCKET[/PREFIX]`; None if `s` is not an s3 URL at all,
    /// an error if it is one that cannot be right.
    pub fn parse(s: &str) -> Option<Result<S3Location, String>> {
        let rest = s.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid {
            return Some(Err(format!(
                "{s}: {bucket:?} is not a bucket name (3-63 of a-z, 0-9, '-', '.')"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..")
            || prefix.chars().any(|c| c.is_control())
        {
            return Some(Err(format!(
                "{s}: the prefix {prefix:?} is not a plain path"
            )));
        }
        let prefix = match prefix {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Some(Ok(S3Location {
            bucket: bucket.to_string(),
            prefix,
        }))
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let l = S3Location::parse("s3://backups/site-a//").unwrap().unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("backups", "site-a/")
        );
        assert_eq!(l.to_string(), "s3://backups/site-a/");
        let l = S3Location::parse("s3://backups").unwrap().unwrap();
        assert_eq!(l.prefix, "");
        assert!(S3Location::parse("/srv/backup").is_none());
    }

    #[test]
    fn refuses_what_cannot_be_a_bucket_or_prefix() {
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://-x-y",
            "s3://b_b/p",
            "s3://ok-bucket/a/../b",
        ] {
            let e = S3Location::parse(bad).unwrap().unwrap_err();
            assert!(e.starts_with(bad), "{e}");
        }
    }
}
