//! `POST /user_tags` bodies: any bytes either parse into a tag or fail with
//! an error naming a field; never a panic. A parsed tag survives both ways
//! it travels: written back as the contract's JSON (profiles) and as
//! protobuf (gRPC and the event log).
#![no_main]

use allezon_core::{ErrorKind, UserTag};
use allezon_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    match UserTag::from_json(body) {
        Ok(tag) => {
            let json = serde_json::to_vec(&tag).expect("a parsed tag serialises");
            let again = UserTag::from_json(&json).expect("a tag written back parses again");
            assert_eq!(again, tag);
            let wire: pb::UserTag = tag.clone().into();
            assert_eq!(UserTag::try_from(wire).expect("protobuf round trip"), tag);
        }
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(err.message().starts_with("invalid `"), "{}", err.message());
        }
    }
});
