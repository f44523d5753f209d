//! `sqlx::migrate!` copies `migrations/` into the library when it compiles;
//! cargo does not know that folder is an input, so a new migration alone would
//! not rebuild the library and the binary would not apply it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
