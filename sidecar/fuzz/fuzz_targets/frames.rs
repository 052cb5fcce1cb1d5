//! Fuzzes the master <-> worker frame decoder: arbitrary bytes must never panic it, it must
//! never consume a partial frame, and every head, body, credit and file request it decodes
//! must re-encode to a frame that decodes to the same value.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wsgiscale_sidecar::proto::{self, Frame, Kind};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match proto::decode(&mut buf, 1 << 16) {
            Ok(Some(frame)) => {
                assert!(buf.len() < before);
                if let Frame::Head(h) = &frame {
                    let mut again = BytesMut::new();
                    proto::encode_head(
                        &mut again,
                        h.stream,
                        h.end,
                        h.status,
                        &h.reason,
                        h.headers.iter().map(|(k, v)| (&k[..], &v[..])).collect::<Vec<_>>().into_iter(),
                        &[&h.body],
                    )
                    .expect("a decoded head re-encodes");
                    let back = proto::decode(&mut again, 1 << 20).expect("valid").expect("whole");
                    assert_eq!(back, frame);
                }
                if let Frame::Body { stream, data } = &frame {
                    let mut again = BytesMut::new();
                    proto::encode_simple(&mut again, Kind::Body, *stream, data);
                    assert_eq!(proto::decode(&mut again, 1 << 20).expect("valid"), Some(frame.clone()));
                }
                if let Frame::Credit { stream, allowed } = &frame {
                    let mut again = BytesMut::new();
                    proto::encode_credit(&mut again, *stream, *allowed);
                    assert_eq!(proto::decode(&mut again, 1 << 20).expect("valid"), Some(frame.clone()));
                }
                if let Frame::RequestFile { stream, env, len } = &frame {
                    let mut again = BytesMut::new();
                    let mut enc = proto::RequestEncoder::new(&mut again);
                    for (k, v) in env {
                        enc.push(k, v);
                    }
                    enc.finish_file(*len).expect("a decoded request re-encodes");
                    proto::set_stream(&mut again, *stream);
                    assert_eq!(proto::decode(&mut again, 1 << 20).expect("valid"), Some(frame.clone()));
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "nothing consumed without a whole frame");
                break;
            }
            Err(_) => break,
        }
    }
});
