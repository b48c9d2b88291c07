"""Generated from proto/linkage/v1 by tools/gen_proto.py; do not edit."""
