//! Property tests standing in for fuzzing (cargo-fuzz needs a nightly
//! toolchain, which this project's machines do not have): arbitrary input at
//! every parser of untrusted data must be answered, never panic.

use proptest::prelude::*;
use prost::Message;
use pushmesh_common::ids::{Channel, ConnectionId, GatewayId, UserId};
use pushmesh_common::proto::{AttachRequest, AttachResponse, PublishRequest, QueryRequest};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn proto_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = AttachRequest::decode(bytes.as_slice());
        let _ = AttachResponse::decode(bytes.as_slice());
        let _ = PublishRequest::decode(bytes.as_slice());
        let _ = QueryRequest::decode(bytes.as_slice());
    }

    #[test]
    fn names_never_panic_and_valid_ones_round_trip(s in ".{0,300}") {
        let _ = Channel::new(s.clone());
        let _ = UserId::new(s.clone());
        if let Ok(id) = ConnectionId::parse(&s) {
            prop_assert_eq!(ConnectionId::parse(&id.to_string()).unwrap(), id);
        }
    }

    #[test]
    fn connection_ids_round_trip(gw in "[A-Za-z0-9_.-]{1,60}", seq in any::<u64>()) {
        let id = ConnectionId::new(GatewayId::new(gw).unwrap(), seq);
        prop_assert_eq!(ConnectionId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn channel_rule_is_exactly_the_documented_set(s in "[A-Za-z0-9_:.@#-]{1,255}") {
        prop_assert!(Channel::new(s).is_ok());
    }
}
