//! A server-role `Connection` fed arbitrary bytes: `[cfg, chunk_seed, wire...]`.
//! Bit 0 of `cfg` negotiates permessage-deflate (parameters from the other
//! bits), bit 1 selects tiny limits. See `switchyard_fuzz::run_connection`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_proto::Role;

fuzz_target!(|data: &[u8]| {
    switchyard_fuzz::run_connection(Role::Server, data);
});
