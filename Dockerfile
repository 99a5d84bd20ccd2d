# One image per Quartet binary. The binary is built on the host (make images) and staged into
# the build context by scripts/images.sh; this file only lays it onto a base.
#
# BASE must provide glibc, libgcc_s and a non-root user 65532. In a normal build environment
# that is the distroless C++ runtime image; on machines that reach no registry,
# scripts/images.sh makes `quartet/base:local` from the host's own libraries (docker import).
ARG BASE=gcr.io/distroless/cc-debian12:nonroot
FROM ${BASE}
ARG BINARY
LABEL org.opencontainers.image.title="${BINARY}" \
      org.opencontainers.image.source="https://github.com/quartet-dev/quartet" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY ${BINARY} /usr/local/bin/quartet
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/quartet"]
