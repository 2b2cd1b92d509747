#!/bin/sh
# Builds every voicemesh image from deploy/docker/Dockerfile (`make images`),
# one build target each, from the repository root, with the first OCI image
# builder found: docker, podman, buildah or nerdctl (or ENGINE=<one of them>).
#
#   TAG=dev make images                                   # voicemesh/<target>:dev, for kind
#   REGISTRY=registry.example.com/voicemesh TAG=1.2.0 PUSH=1 make images
#   TARGETS="gateway synth-cpu" TAG=dev make images       # only these
#   deploy/docker/build-images.sh --dry-run               # print the commands, run nothing
#
# REGISTRY: the name before /<target> (default voicemesh, as the manifests name
# the images); TAG: default latest; PUSH=1 pushes each image once built;
# BUILD_ARGS: more arguments for every build (--build-arg CUDA_IMAGE=...).
set -eu

ALL_TARGETS="gateway library transcode stt synth synth-cpu"
TARGETS=${TARGETS:-$ALL_TARGETS}
REGISTRY=${REGISTRY:-voicemesh}
TAG=${TAG:-latest}
PUSH=${PUSH:-}
BUILD_ARGS=${BUILD_ARGS:-}
DRY_RUN=
for argument in "$@"; do
    case $argument in
        --dry-run|-n) DRY_RUN=1 ;;
        *) echo "build-images.sh: unknown argument $argument (--dry-run only)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/../.."

for target in $TARGETS; do
    case " $ALL_TARGETS " in
        *" $target "*) ;;
        *) echo "build-images.sh: no build target $target (targets: $ALL_TARGETS)" >&2; exit 2 ;;
    esac
done

if [ -z "${ENGINE:-}" ]; then
    for candidate in docker podman buildah nerdctl; do
        if command -v "$candidate" >/dev/null 2>&1; then
            ENGINE=$candidate
            break
        fi
    done
fi
if [ -z "${ENGINE:-}" ]; then
    if [ -z "$DRY_RUN" ]; then
        echo "build-images.sh: no OCI image builder found (docker, podman, buildah, nerdctl); install one or set ENGINE" >&2
        exit 1
    fi
    ENGINE=docker  # what a dry run shows when none is installed
fi
case $ENGINE in
    docker|podman|nerdctl) build="$ENGINE build" ;;
    buildah) build="buildah build" ;;
    *) echo "build-images.sh: ENGINE=$ENGINE is not one of docker, podman, buildah, nerdctl" >&2; exit 2 ;;
esac

run() {
    echo "$*"
    if [ -z "$DRY_RUN" ]; then
        "$@"
    fi
}

for target in $TARGETS; do
    image="$REGISTRY/$target:$TAG"
    # shellcheck disable=SC2086  # BUILD_ARGS and $build are word lists
    run $build -f deploy/docker/Dockerfile --target "$target" -t "$image" $BUILD_ARGS .
    if [ -n "$PUSH" ]; then
        run "$ENGINE" push "$image"
    fi
done
