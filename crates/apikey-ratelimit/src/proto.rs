//! The protobuf messages and the tonic service of
//! `envoy.service.ratelimit.v3.RateLimitService`, generated from Envoy's
//! own `.proto` files by the `envoy-types` crate, under the names the rest
//! of this crate uses.
//!
//! `envoy-types` over `tonic-prost-build` + `protox`: it is built on the
//! same tonic 0.14 and prost 0.14 as this server, ships the code already
//! generated (no build script, no `.proto` files to vendor and keep in
//! step with Envoy), and its messages carry every field of the API, so
//! fields this server does not use (`is_negative_hits`, response headers,
//! quotas) are decoded and left empty instead of being declared by hand.
//! Empty fields are not encoded, so an answer is the same bytes as before.
//! The tests check the field numbers against the filter's own hand-rolled
//! codec (`apikey_core::rls_codec`).

pub use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
pub use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
pub use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
pub use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
pub use envoy_types::pb::google::protobuf::Duration;
// What only the tests build: the server reads descriptors, never makes one.
#[cfg(test)]
pub use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::{Entry, RateLimitOverride},
    RateLimitDescriptor,
};
#[cfg(test)]
pub use envoy_types::pb::google::protobuf::UInt64Value;

/// The `google.protobuf.Duration` of `millis` milliseconds.
pub fn duration_from_millis(millis: u64) -> Duration {
    Duration {
        seconds: i64::try_from(millis / 1000).unwrap_or(i64::MAX),
        // < 1e9, so it fits.
        nanos: i32::try_from((millis % 1000) * 1_000_000).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apikey_core::rls_codec;
    use prost::Message;

    #[test]
    fn decodes_what_the_filter_sends() {
        let bytes = rls_codec::encode_request(
            "apikey",
            &rls_codec::Descriptor {
                key_id: "key_1",
                scope: "leads:*",
                requests_per_unit: 100,
                unit: rls_codec::Unit::Minute,
            },
        );
        let request = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(request.domain, "apikey");
        assert_eq!(request.hits_addend, 1);
        let [descriptor] = request.descriptors.as_slice() else {
            panic!("one descriptor expected: {request:?}");
        };
        let entries: Vec<_> = descriptor
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(entries, [("key_id", "key_1"), ("scope", "leads:*")]);
        assert_eq!(
            descriptor.limit,
            Some(RateLimitOverride {
                requests_per_unit: 100,
                unit: RateLimitUnit::Minute as i32,
            })
        );
        assert_eq!(descriptor.hits_addend, None);
        assert!(!descriptor.is_negative_hits);
    }

    /// An over-limit answer for 5 a minute, `remaining` left, reset in
    /// 41.25 s.
    fn over_limit(remaining: u32) -> RateLimitResponse {
        RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: 5,
                    unit: RateLimitUnit::Minute as i32,
                }),
                limit_remaining: remaining,
                duration_until_reset: Some(duration_from_millis(41_250)),
                ..DescriptorStatus::default()
            }],
            ..RateLimitResponse::default()
        }
    }

    #[test]
    fn the_filter_reads_what_the_server_answers() {
        let response = over_limit(0);
        let answer = rls_codec::decode_response(&response.encode_to_vec()).unwrap();
        assert_eq!(
            answer,
            rls_codec::Answer {
                overall: rls_codec::Code::OverLimit,
                reset_seconds: Some(42),
            }
        );
    }

    #[test]
    fn an_answer_carries_only_the_fields_this_server_sets() {
        // The bytes the hand-declared messages produced before the
        // generated ones replaced them (printed by that code): overall_code 2; one status with
        // code 2, current_limit {requests_per_unit 5, unit 2},
        // limit_remaining 1, duration_until_reset {seconds 41, nanos 250 ms}.
        let response = over_limit(1);
        assert_eq!(
            response.encode_to_vec(),
            [
                0x08, 0x02, 0x12, 0x13, 0x08, 0x02, 0x12, 0x04, 0x08, 0x05, 0x10, 0x02, 0x18, 0x01,
                0x22, 0x07, 0x08, 0x29, 0x10, 0x80, 0xe5, 0x9a, 0x77
            ],
            "the encoded answer changed"
        );
    }

    #[test]
    fn durations_split_into_seconds_and_nanos() {
        assert_eq!(
            duration_from_millis(1_500),
            Duration {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(duration_from_millis(0), Duration::default());
    }
}
