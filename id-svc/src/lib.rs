//! id-svc: stable small integer ids for origin, brand and category (being built; see issue 3).
