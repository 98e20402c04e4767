"""The FUSE mount: paths and errors are translated here; reading is PackedFile's job."""
