//! `apikey`: the key-management command line (being written).

fn main() {}
