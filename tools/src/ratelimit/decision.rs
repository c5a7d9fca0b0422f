//! One rate-limit request → the counters it is counted against → Envoy's answer. Pure: the
//! service (`service`) does the counting in between.
//!
//! keygate's descriptor is the one Envoy builds from the filter's forwarded headers:
//! `limits` (the key's own limits, `core::limits`' header value), `key_id` and, when the key
//! has one, `owner`. Descriptors without `limits` are not keygate's and are answered OK.

use crate::ratelimit::counters::{Decision, Status};
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use keygate::core::config::Per;
use keygate::core::limits::{parse_header, Limit};

/// The 429's body, as the service sends it (Envoy's `raw_body`).
pub const LIMITED_BODY: &str =
    r#"{"error": "Too Many Requests", "message": "Rate limit exceeded"}"#;

/// Who a request counts against, and under which limits of its own.
#[derive(Debug, PartialEq, Eq)]
pub struct Subject {
    pub key_id: String,
    pub owner: Option<String>,
    pub key_limits: Vec<Limit>,
}

/// Reads keygate's descriptor; `Ok(None)` for a descriptor that is not keygate's.
pub fn subject<'a>(
    entries: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Option<Subject>, &'static str> {
    let (mut limits, mut key_id, mut owner) = (None, None, None);
    for (key, value) in entries {
        match key {
            "limits" => limits = Some(value),
            "key_id" => key_id = Some(value),
            "owner" => owner = Some(value),
            _ => {}
        }
    }
    let Some(limits) = limits else { return Ok(None) };
    let key_limits = parse_header(limits)?;
    let key_id = key_id.filter(|k| !k.is_empty()).ok_or("no key_id in the descriptor")?;
    Ok(Some(Subject {
        key_id: key_id.to_string(),
        owner: owner.filter(|o| !o.is_empty()).map(str::to_string),
        key_limits,
    }))
}

/// One counter to count against: its name, and the limit it enforces.
#[derive(Debug, PartialEq, Eq)]
pub struct Counted {
    pub counter: String,
    pub limit: Limit,
}

/// The key's limits, then its owner's. Names put the window length and the label before
/// the id or owner, which may hold any printable character: labels and lengths never hold
/// `:`, so no two limits share a counter.
pub fn counted(subject: &Subject, owner_limits: &[Limit]) -> Vec<Counted> {
    let mut all = Vec::with_capacity(subject.key_limits.len() + owner_limits.len());
    for limit in &subject.key_limits {
        let counter = format!("k:{}:{}:{}", limit.per.seconds(), limit.label(), subject.key_id);
        all.push(Counted { counter, limit: limit.clone() });
    }
    if let Some(owner) = &subject.owner {
        for limit in owner_limits {
            let counter = format!("o:{}:{}:{owner}", limit.per.seconds(), limit.label());
            all.push(Counted { counter, limit: limit.clone() });
        }
    }
    all
}

/// Envoy's answer for one keygate descriptor: OK or OVER_LIMIT, with the status of the
/// tightest counter (fewest requests remaining), from which Envoy writes the
/// `x-ratelimit-*` headers; a refusal also carries the JSON body and `retry-after`.
pub fn response(counted: &[Counted], decision: &Decision) -> RateLimitResponse {
    let (code, statuses, refused) = match decision {
        Decision::Allowed(statuses) => (Code::Ok, statuses, None),
        Decision::Limited { index, statuses } => (Code::OverLimit, statuses, Some(*index)),
    };
    let tightest = match refused {
        Some(i) => Some(i),
        None => (0..statuses.len()).min_by_key(|&i| statuses[i].remaining),
    };
    let mut answer = RateLimitResponse { overall_code: code as i32, ..Default::default() };
    if let (Some(i), Some(c)) = (tightest, tightest.and_then(|i| counted.get(i))) {
        if let Some(s) = statuses.get(i) {
            answer.statuses.push(descriptor_status(code, &c.limit, s));
        }
    }
    if let Some(s) = refused.and_then(|i| statuses.get(i)) {
        answer.raw_body = LIMITED_BODY.as_bytes().to_vec();
        answer.response_headers_to_add = vec![
            header("content-type", "application/json"),
            header("retry-after", &s.reset_secs.max(1).to_string()),
        ];
    }
    answer
}

/// The answer when keygate is not asked anything (no keygate descriptor): OK.
pub fn allowed() -> RateLimitResponse {
    RateLimitResponse { overall_code: Code::Ok as i32, ..Default::default() }
}

fn descriptor_status(code: Code, limit: &Limit, s: &Status) -> DescriptorStatus {
    let unit = match limit.per {
        Per::Second => Unit::Second,
        Per::Minute => Unit::Minute,
        Per::Hour => Unit::Hour,
        Per::Day => Unit::Day,
    };
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            // Envoy writes it into x-ratelimit-limit (`;name="..."`): only a limit's own name.
            name: limit.name.as_deref().unwrap_or_default().to_string(),
            requests_per_unit: clamp(limit.requests),
            unit: unit as i32,
        }),
        limit_remaining: clamp(s.remaining),
        duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: i64::try_from(s.reset_secs).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue { key: key.into(), value: value.into(), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

    fn subject_of(pairs: &[(&str, &str)]) -> Result<Option<Subject>, &'static str> {
        subject(pairs.iter().copied())
    }

    #[test]
    fn only_descriptors_with_limits_are_keygates() {
        assert_eq!(subject_of(&[("generic_key", "x")]), Ok(None));
        assert_eq!(subject_of(&[("limits", "5/second")]), Err("no key_id in the descriptor"));
        assert_eq!(subject_of(&[("limits", "5/week"), ("key_id", "k")]), Err("unknown per"));
        let s = subject_of(&[("limits", "owner"), ("key_id", "k"), ("owner", "acme")]);
        assert_eq!(
            s,
            Ok(Some(Subject {
                key_id: "k".into(),
                owner: Some("acme".into()),
                key_limits: vec![]
            }))
        );
    }

    #[test]
    fn key_and_owner_limits_count_on_counters_of_their_own() {
        let Ok(Some(s)) = subject_of(&[
            ("limits", "burst=5/second,100/day"),
            ("key_id", "k:1"),
            ("owner", "a:b"),
        ]) else {
            unreachable!("a keygate descriptor")
        };
        let owner = parse_header("1000/minute").unwrap_or_default();
        let names: Vec<String> = counted(&s, &owner).into_iter().map(|c| c.counter).collect();
        assert_eq!(names, ["k:1:burst:k:1", "k:86400:100/day:k:1", "o:60:1000/minute:a:b"]);
        let alone = Subject { owner: None, ..s };
        assert_eq!(counted(&alone, &owner).len(), 2, "no owner, no owner limits");
    }

    #[test]
    fn a_refusal_names_the_refusing_counter_and_an_allowance_the_tightest() {
        let limits = parse_header("a=5/second,b=100/day").unwrap_or_default();
        let counted: Vec<Counted> =
            limits.into_iter().map(|limit| Counted { counter: String::new(), limit }).collect();
        let status = |remaining, reset_secs| Status { limit: 0, remaining, reset_secs };
        let allowed = response(&counted, &Decision::Allowed(vec![status(4, 1), status(2, 500)]));
        assert_eq!(allowed.overall_code, Code::Ok as i32);
        assert_eq!(allowed.statuses.len(), 1);
        assert_eq!(allowed.statuses[0].limit_remaining, 2);
        assert!(allowed.raw_body.is_empty() && allowed.response_headers_to_add.is_empty());
        let refused = response(
            &counted,
            &Decision::Limited { index: 0, statuses: vec![status(0, 1), status(50, 500)] },
        );
        assert_eq!(refused.overall_code, Code::OverLimit as i32);
        assert_eq!(
            refused.statuses[0].current_limit.as_ref().map(|l| l.requests_per_unit),
            Some(5)
        );
        assert_eq!(refused.raw_body, LIMITED_BODY.as_bytes());
        let headers: Vec<(&str, &str)> = refused
            .response_headers_to_add
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(headers, [("content-type", "application/json"), ("retry-after", "1")]);
    }
}
