//! `natter`: the terminal client.
