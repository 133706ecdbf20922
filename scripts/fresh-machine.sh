#!/usr/bin/env bash
# The fresh-machine check: the README's front doors, tried as a new user would,
# on a clean Debian 12 with nothing installed beforehand. CI runs it (.ci/run).
#
#   demo     in a fresh debian:bookworm container, on a fresh clone of this
#            repository's HEAD: ./scripts/demo.sh; PNGs must appear in output/.
#            Counts the installed packages before and after.
#   test     the same, with ./scripts/test.sh: every test must pass.
#   compose  the first block of the README's "docker-compose" section, run
#            verbatim by a user who is not root (uid 1001), on a fresh clone,
#            with the demo stage's sample videos in ~/Videos: the image is
#            built with the project's Dockerfile, every video gets a PNG in
#            output/ owned by that user, docker-compose down leaves nothing.
#   scale    its second block: up -d --scale server=3 server, a client on
#            dns:///server:50051; each replica's own access log (docker-compose
#            logs) must show calls, and the three must add up to the files.
#
# usage: scripts/fresh-machine.sh [--stage demo|test|compose|scale|all]...
# The stages run in that order; default all. compose and scale need the
# demo stage's sample videos (kept in the cache from its last run).
#
# Needs root (debootstrap, dockerd), git, debootstrap, docker.io and
# docker-compose; installs the last three with apt-get when they are missing.
# Uses the Docker engine that answers (DOCKER_HOST, else /var/run/docker.sock);
# when none does, starts its own dockerd (data in the cache, runtime state in
# a temporary directory) and stops it at the end. If dockerd cannot start, the
# check fails: it never skips.
#
# The base image debian:bookworm (also tagged debian:bookworm-slim, for the
# Dockerfile's runtime stage) is made without any image registry: debootstrap
# --variant=minbase from the host's Debian mirror, then docker import. It is
# made once and cached, with the engine's data (image layers, build cache),
# the downloaded .deb files and npm's cache, in TN_FRESH_CACHE (default
# /var/cache/thumbnail-fresh). Delete that directory to start from nothing.
#
# Environment: TN_FRESH_CACHE; TN_FRESH_MIRROR (default: the host's apt
# sources); TN_FRESH_KEEP=1 keeps the clones and logs of a passing run (a
# failing run always keeps them); CI is passed into the containers.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
CACHE=${TN_FRESH_CACHE:-/var/cache/thumbnail-fresh}
IMAGE=debian:bookworm
PROJECT=tnfresh # docker-compose project name: its containers, network, image

say() { printf '\n== fresh-machine: %s\n' "$*"; }
die() {
    printf '\n!! fresh-machine: FAILED: %s\n' "$*" >&2
    exit 1
}

# --- arguments ------------------------------------------------------------------
ALL_STAGES=(demo test compose scale)
want=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --stage)
        [[ $# -ge 2 ]] || die "--stage needs a value"
        IFS=, read -ra s <<<"$2"
        want+=("${s[@]}")
        shift 2
        ;;
    --stage=*)
        IFS=, read -ra s <<<"${1#--stage=}"
        want+=("${s[@]}")
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ ${#want[@]} -eq 0 ]] && want=(all)
STAGES=()
for st in "${ALL_STAGES[@]}"; do
    for w in "${want[@]}"; do
        if [[ $w == all || $w == "$st" ]]; then
            STAGES+=("$st")
            break
        fi
    done
done
for w in "${want[@]}"; do
    [[ $w == all || " ${ALL_STAGES[*]} " == *" $w "* ]] || die "unknown stage $w (${ALL_STAGES[*]} or all)"
done

[[ $(id -u) -eq 0 ]] || die "run as root: debootstrap and dockerd need it"

# --- stage timing -----------------------------------------------------------------
TIMES=()
T0=$SECONDS
RUNNING=() # the stages in progress, innermost last, each "NAME START"
timed() { # timed NAME COMMAND...: runs it, records its wall time
    local name=$1 t=$SECONDS
    shift
    say "$name"
    RUNNING+=("$t $name")
    "$@"
    unset 'RUNNING[-1]'
    TIMES+=("$(printf '%-40s %5d s' "$name" $((SECONDS - t)))")
}
print_times() {
    local r
    for r in "${RUNNING[@]}"; do # the stage(s) that failed
        TIMES+=("$(printf '%-40s %5d s  FAILED' "${r#* }" $((SECONDS - ${r%% *})))")
    done
    printf '\n== fresh-machine: wall time per stage\n'
    printf '  %s\n' "${TIMES[@]}"
    printf '  %-40s %5d s\n' total $((SECONDS - T0))
}
logged() { # logged NAME COMMAND...: its output to the terminal and to logs/NAME.log
    local name=$1
    shift
    "$@" 2>&1 | tee "$RUN/logs/$name.log"
}

# --- host tools -----------------------------------------------------------------------
need=()
command -v git >/dev/null || die "git is not installed"
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [[ ${#need[@]} -gt 0 ]]; then
    say "installing ${need[*]} on this host"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
        --no-install-recommends "${need[@]}" || die "could not install ${need[*]}"
fi

mkdir -p "$CACHE/docker" "$CACHE/apt-archives" "$CACHE/npm" "$CACHE/samples"
RUN=$(mktemp -d /tmp/tn-fresh.XXXXXX) # this run: clones, logs, dockerd's runtime state
chmod 755 "$RUN"
mkdir -p "$RUN/logs"
DOCKERD_PID=
CONTAINER_NAME= # the container running now
# shellcheck disable=SC2317  # called from the EXIT trap
finish() {
    local rc=$?
    set +e
    [[ -n $CONTAINER_NAME ]] && docker rm -f "$CONTAINER_NAME" >/dev/null 2>&1
    if [[ -d $RUN/compose ]]; then
        (cd "$RUN/compose" && docker-compose down >/dev/null 2>&1)
    fi
    if [[ -n $DOCKERD_PID ]]; then
        echo "fresh-machine: stopping the dockerd it started (pid $DOCKERD_PID)"
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            echo "fresh-machine: dockerd did not stop in 30 s: SIGKILL" >&2
            kill -KILL "$DOCKERD_PID"
            sleep 1
        fi
        # What it leaves mounted in its exec root (its network namespace).
        awk -v d="$RUN/exec/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
            while read -r m; do umount "$m"; done
    fi
    print_times
    local summary=
    [[ -f $RUN/logs/test.log ]] && summary=$(test_summary "$RUN/logs/test.log")
    if [[ $rc -eq 0 && ${TN_FRESH_KEEP:-0} != 1 ]] && ! grep -qF " $RUN/" /proc/mounts; then
        rm -rf "$RUN"
    else
        echo "fresh-machine: clones and logs kept in $RUN"
    fi
    [[ $rc -eq 0 ]] && echo "fresh-machine: PASSED (${STAGES[*]})"
    # Last, so that CI reads it: the ctest totals of the test stage's passes.
    [[ -n $summary ]] && echo "$summary"
    exit "$rc"
}
# test_summary LOG: "tests: N passed, N failed, N skipped", summed over every
# ctest pass in LOG (plain, ASan, fuzz); nothing if no pass ended.
test_summary() {
    awk '/^[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+$/ { total += $NF; failed += $4; n++ }
         /^\t *[0-9]+ - .* \(Skipped\)$/ { skipped++ }
         END { if (n) printf "tests: %d passed, %d failed, %d skipped\n", total - failed - skipped, failed, skipped }' "$1"
}
trap finish EXIT
trap "exit 130" INT
trap "exit 143" TERM

# --- the Docker engine -------------------------------------------------------------------
start_engine() {
    if [[ -n ${DOCKER_HOST:-} ]] && docker info >/dev/null 2>&1; then
        echo "using the Docker engine at $DOCKER_HOST"
        return 0
    fi
    if docker -H unix:///var/run/docker.sock info >/dev/null 2>&1; then
        export DOCKER_HOST=unix:///var/run/docker.sock
        echo "using the Docker engine at $DOCKER_HOST"
        return 0
    fi
    # Our own: data (images, build cache) in the cache, runtime state here.
    # One dockerd per data root.
    exec 9>"$CACHE/lock"
    flock -w 3600 9 || die "another fresh-machine run holds $CACHE/lock"
    export DOCKER_HOST=unix://$RUN/docker.sock
    dockerd --data-root "$CACHE/docker" --exec-root "$RUN/exec" --pidfile "$RUN/dockerd.pid" \
        -H "$DOCKER_HOST" >"$RUN/logs/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 120); do
        if docker info >/dev/null 2>&1; then
            echo "started dockerd (pid $DOCKERD_PID, data in $CACHE/docker, log $RUN/logs/dockerd.log)"
            # The user who runs the README's docker-compose commands may use it.
            chgrp "${USER_ID#*:}" "$RUN/docker.sock"
            return 0
        fi
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 0.5
    done
    echo "---- last lines of $RUN/logs/dockerd.log:" >&2
    tail -n 30 "$RUN/logs/dockerd.log" >&2
    kill -0 "$DOCKERD_PID" 2>/dev/null || DOCKERD_PID=
    die "no Docker engine answers and dockerd could not be started (see above). This check needs one: it does not skip."
}

# --- the base image -------------------------------------------------------------------------
host_mirror() { # the first deb URI for bookworm in the host's apt sources
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -e $f ]] || continue
        awk 'BEGIN { RS = "" }
             { uri = ""; suites = ""; types = ""
               n = split($0, l, "\n")
               for (i = 1; i <= n; i++) {
                   if (l[i] ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", l[i]); split(l[i], u, /[ \t]+/); uri = u[1] }
                   else if (l[i] ~ /^Suites:/) suites = " " substr(l[i], 8) " "
                   else if (l[i] ~ /^Types:/) types = " " substr(l[i], 7) " "
               }
               gsub(/\t/, " ", suites); gsub(/\t/, " ", types)
               if (uri != "" && types ~ / deb / && suites ~ / bookworm /) { print uri; exit }
             }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -e $f ]] || continue
        sed -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }'
    done
}

# Bump when the recipe below changes: a cached image made otherwise is remade.
RECIPE=2
base_image() {
    if [[ $(docker image inspect -f '{{index .Config.Labels "thumbnail.fresh.recipe"}}' "$IMAGE" \
        2>/dev/null) == "$RECIPE" ]]; then
        echo "$IMAGE: cached ($(docker image inspect -f '{{.Created}}' "$IMAGE"))"
    else
        local mirror=${TN_FRESH_MIRROR:-$(host_mirror | head -n 1)}
        [[ -n $mirror ]] || die "no bookworm mirror in /etc/apt/sources*: set TN_FRESH_MIRROR"
        echo "$IMAGE: debootstrap --variant=minbase bookworm from $mirror"
        local dir=$CACHE/rootfs
        rm -rf "$dir"
        debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$RUN/logs/debootstrap.log" 2>&1 ||
            { tail -n 20 "$RUN/logs/debootstrap.log" >&2; die "debootstrap failed"; }
        # As the official images: no package lists, no downloaded packages, and
        # dpkg does not fsync every file (the container is thrown away anyway).
        rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb
        echo force-unsafe-io >"$dir/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
        tar -C "$dir" -c . | docker import -c 'CMD ["bash"]' \
            -c "LABEL thumbnail.fresh.recipe=$RECIPE" - "$IMAGE"
        rm -rf "$dir"
    fi
    docker tag "$IMAGE" debian:bookworm-slim
}

# --- what every container gets from the host ----------------------------------------------------
# The host's apt sources and its settings for reaching the archive
# (a proxy, Check-Valid-Until for a snapshot mirror), its CA bundle for npm
# (egress may go through a TLS proxy), and caches.
host_files() {
    local a=$RUN/host-apt f
    mkdir -p "$a/sources.list.d" "$a/apt.conf.d"
    if [[ -f /etc/apt/sources.list ]]; then cp /etc/apt/sources.list "$a/"; else : >"$a/sources.list"; fi
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [[ -e $f ]] && cp "$f" "$a/sources.list.d/"
    done
    for f in /etc/apt/apt.conf.d/*; do
        [[ -f $f ]] && grep -qiE 'Check-Valid-Until|Check-Date|::Proxy' "$f" && cp "$f" "$a/apt.conf.d/"
    done
    printf "  handed to the containers: %s\n" "$a"/sources.list "$a"/sources.list.d/* "$a"/apt.conf.d/*
    CONTAINER=(docker run --rm --init --network host --cap-add SYS_ADMIN --cap-add SYS_PTRACE
        --security-opt seccomp=unconfined --security-opt apparmor=unconfined
        -v "$a/sources.list:/etc/apt/sources.list:ro"
        -v "$a/sources.list.d:/etc/apt/sources.list.d:ro")
    for f in "$a"/apt.conf.d/*; do
        [[ -e $f ]] && CONTAINER+=(-v "$f:/etc/apt/apt.conf.d/$(basename "$f"):ro")
    done
    CONTAINER+=(-v "$CACHE/apt-archives:/var/cache/apt/archives" -v "$CACHE/npm:/root/.npm"
        -e CI -e DEBIAN_FRONTEND=noninteractive)
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        CONTAINER+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/host-ca.crt:ro
            -e NODE_EXTRA_CA_CERTS=/etc/host-ca.crt -e npm_config_cafile=/etc/host-ca.crt)
    fi
}

SHA=$(git -C "$ROOT" rev-parse HEAD)
fresh_clone() { # fresh_clone DIR: this repository's HEAD commit
    git clone -q "$ROOT" "$1"
    git -C "$1" checkout -q --detach "$SHA"
}

# In a fresh container with the clone at /src, as the README says: cd, run.
in_container() { # in_container NAME CLONE SCRIPT
    local name=$1 clone=$2 script=$3
    CONTAINER_NAME=$PROJECT-$name-$$
    logged "$name" "${CONTAINER[@]}" --name "$CONTAINER_NAME" -v "$clone:/src" -w /src "$IMAGE" \
        bash -euo pipefail -c "$script"
}

# The package count, and which packages a run upgraded: before/after lists.
# shellcheck disable=SC2016 # expanded in the container
PKGS='dpkg-query -W -f="\${db:Status-Abbrev} \${Package} \${Version}\n" | awk "\$1 == \"ii\" { print \$2, \$3 }" | sort'

stage_demo() {
    local c=$RUN/demo
    fresh_clone "$c"
    in_container demo "$c" "
        $PKGS >/tmp/before
        ./scripts/demo.sh
        $PKGS >/tmp/after
        echo \"fresh-machine: packages installed: \$(wc -l </tmp/before) before, \$(wc -l </tmp/after) after\"
        up=\$(join /tmp/before /tmp/after | awk '\$2 != \$3 { print \$1 }' | tr '\n' ' ')
        echo \"fresh-machine: packages upgraded: \${up:-none}\"
        " || die "demo: ./scripts/demo.sh failed in a clean container (log: $RUN/logs/demo.log)"
    local n_in n_png
    n_in=$(find "$c/input" -type f ! -name .gitkeep | wc -l)
    n_png=$(find "$c/output" -name '*.png' -size +0 | wc -l)
    echo "demo: $n_in videos in input/, $n_png PNGs in output/"
    [[ $n_in -gt 0 && $n_png -ge $n_in ]] || die "demo: expected a PNG in output/ for each of the $n_in videos in input/"
    rm -f "$CACHE"/samples/*
    cp "$c"/input/sample_* "$CACHE/samples/"
}

stage_test() {
    local c=$RUN/test
    fresh_clone "$c"
    in_container test "$c" "./scripts/test.sh" ||
        die "test: ./scripts/test.sh failed in a clean container (log: $RUN/logs/test.log)"
    echo "test: skipped tests, as the suite reported them:"
    grep -E "\.\.\. skipped |^OK \(.*skipped=|Not Run|Skipped" "$RUN/logs/test.log" |
        sed 's/^/  /' || echo "  none"
}

# --- docker-compose, as the README says ----------------------------------------------------------
# The README's two docker-compose blocks, run verbatim, line by line, by a
# user who is not root: uid:gid 1001:1001 (not 1000, the default in
# docker-compose.yml, so that what decides is HOST_UID/HOST_GID), with the
# Docker socket's group, HOME in this run's directory with sample videos in
# ~/Videos, owning a fresh clone. Each line's wall time is a stage time.
USER_ID=1001:1001
export COMPOSE_PROJECT_NAME=$PROJECT

compose_clone() {
    local c=$RUN/compose
    [[ -d $c ]] && return 0
    compgen -G "$CACHE/samples/sample_*" >/dev/null ||
        die "no sample videos in $CACHE/samples: run the demo stage first (--stage demo)"
    fresh_clone "$c"
    mkdir -p "$RUN/home/Videos"
    cp "$CACHE"/samples/sample_* "$RUN/home/Videos/"
    chown -R "$USER_ID" "$c" "$RUN/home"
}

readme_block() { # readme_block N: the Nth ```sh block of the README's "## docker-compose"
    awk -v want="$1" '
        /^## / { in_section = ($0 == "## docker-compose") }
        in_section && /^```sh$/ { n++; if (n == want) { on = 1; next } }
        on && /^```$/ { exit }
        on { print }' "$RUN/compose/README.md"
}

as_user() { # as_user NAME N: run block N as the user; its lines' times into TIMES
    local name=$1 sock=${DOCKER_HOST#unix://} block line
    block=$(readme_block "$2")
    [[ -n $block ]] || die "$name: no block $2 under '## docker-compose' in README.md"
    [[ -S $sock ]] || die "$name: DOCKER_HOST $DOCKER_HOST is not a unix socket"
    # Each line as typed, in one shell (export carries over), timed.
    # shellcheck disable=SC2016 # expanded by the user's shell
    local runner='
        set -euo pipefail
        while IFS= read -r line; do
            [[ -z $line ]] && continue
            printf "\n$ %s\n" "$line"
            t=$SECONDS
            eval "$line" </dev/null # as typed: stdin is not the rest of the block
            l=${line%%#*}; printf "fresh-machine-time %d %s\n" $((SECONDS - t)) "${l%"${l##*[! ]}"}"
        done'
    local rc=0
    printf '%s\n' "$block" | (cd "$RUN/compose" && setpriv --reuid="${USER_ID%:*}" \
        --regid="${USER_ID#*:}" --groups="$(stat -c %g "$sock")" -- env -i PATH="$PATH" \
        HOME="$RUN/home" DOCKER_HOST="$DOCKER_HOST" COMPOSE_PROJECT_NAME="$PROJECT" \
        bash -c "$runner") 2>&1 | tee "$RUN/logs/$name.log" || rc=$?
    while read -r _ secs line; do
        TIMES+=("$(printf '  %-38s %5d s' "$(echo "$line" | cut -c1-38)" "$secs")")
    done < <(grep '^fresh-machine-time ' "$RUN/logs/$name.log")
    [[ $rc -eq 0 ]] || die "$name: a command of the README failed (log: $RUN/logs/$name.log)"
}

stage_compose() {
    compose_clone
    local c=$RUN/compose
    as_user compose 1
    local n_in n_png bad left
    n_in=$(find "$c/input" -type f ! -name .gitkeep | wc -l)
    n_png=$(find "$c/output" -name '*.png' -size +0 | wc -l)
    bad=$(find "$c/output" -mindepth 1 ! \( -uid "${USER_ID%:*}" -gid "${USER_ID#*:}" \) -printf '  %u:%g %p\n')
    echo "compose: $n_in videos in input/, $n_png PNGs in output/, owner $USER_ID expected"
    [[ $n_in -gt 0 && $n_png -ge $n_in ]] || die "compose: expected a PNG in output/ for each video in input/"
    [[ -z $bad ]] || die "compose: files in output/ not owned by $USER_ID:
$bad"
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
    [[ -z $left ]] || die "compose: containers left after docker-compose down: $left"
}

stage_scale() {
    compose_clone
    local c=$RUN/compose f r
    # More files than replicas, so that each one is asked more than once, and
    # none done yet (the client skips a thumbnail that exists).
    for f in "$CACHE"/samples/sample_*; do
        for r in 1 2 3; do
            cp "$f" "$c/input/scale${r}_$(basename "$f")"
        done
    done
    rm -rf "${c:?}"/output/*
    chown -R "$USER_ID" "$c/input" "$c/output"
    as_user scale 2
    local n_in n_png calls replicas total left
    n_in=$(find "$c/input" -type f ! -name .gitkeep | wc -l)
    n_png=$(find "$c/output" -name '*.png' -size +0 | wc -l)
    [[ $n_png -ge $n_in ]] || die "scale: $n_png PNGs for $n_in videos"
    # docker-compose logs prefixes each line with its container's name.
    # The client sends the folder as Batch calls (a chunk of files each): what
    # each replica made is the sum of its calls' thumbnails=N, one per file.
    calls=$(awk -F' *[|] ' '/ (Batch|Generate) .*status=OK/ && match($0, /thumbnails=[0-9]+/) {
            n[$1] += substr($0, RSTART + 11, RLENGTH - 11) }
        END { for (r in n) print n[r], r }' "$RUN/logs/scale.log" | sort -k2)
    echo "scale: $n_in files; thumbnails in each replica's own access log:"
    while read -r n r; do printf '  %s: %d\n' "$r" "$n"; done <<<"$calls"
    replicas=$(echo "$calls" | grep -c . || true)
    total=$(echo "$calls" | awk '{ n += $1 } END { print n + 0 }')
    [[ $total -eq $n_in ]] || die "scale: the replicas logged $total thumbnails for $n_in files"
    [[ $replicas -eq 3 ]] || die "scale: $replicas of 3 replicas served calls: the calls were not spread"
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
    [[ -z $left ]] || die "scale: containers left after docker-compose down: $left"
}

# --- run -----------------------------------------------------------------------------------------
echo "fresh-machine: commit $SHA, stages: ${STAGES[*]}, cache $CACHE, this run in $RUN"
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no) ]]; then
    echo "fresh-machine: note: uncommitted changes in $ROOT are not in the clones"
fi
timed "engine" start_engine
timed "base image" base_image
host_files
for st in "${STAGES[@]}"; do
    case $st in
    demo) timed "demo (./scripts/demo.sh)" stage_demo ;;
    test) timed "test (./scripts/test.sh)" stage_test ;;
    compose) timed "compose" stage_compose ;;
    scale) timed "scale" stage_scale ;;
    esac
done
