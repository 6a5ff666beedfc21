# shellcheck shell=bash
# Shared settings for fetch.sh and start.sh. Sourced, not executed.

# Pinned Keycloak distribution (Maven: org.keycloak:keycloak-quarkus-dist:VERSION:tar.gz).
KC_VERSION=26.7.3
# Java for Keycloak 26.7: 25 and 21 preferred (tested: Temurin 25), 17 still
# boots and passes a login (tested: Debian OpenJDK 17.0.15) but is deprecated.
KC_PREFERRED_JAVA=21
KC_MIN_JAVA=17

CADDY_PAR_CACHE=${CADDY_PAR_CACHE:-${HOME:?HOME is not set}/.cache/caddy-par}
KC_CACHE_DIR=$CADDY_PAR_CACHE/keycloak-$KC_VERSION
# shellcheck disable=SC2034 # used by the scripts that source this file
KC_DIST_DIR=$KC_CACHE_DIR/keycloak-$KC_VERSION

die() {
  printf '%s: %s\n' "${0##*/}" "$*" >&2
  exit 1
}

log() {
  printf '%s: %s\n' "${0##*/}" "$*" >&2
}

# java_feature JAVA_BIN -> prints the feature release (17, 21, 25, ...) or nothing.
java_feature() {
  local v
  v=$("$1" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -n1)
  printf '%s' "${v%%.*}"
}

# find_java_home -> prints the JAVA_HOME to run Keycloak with, or dies.
# KC_JAVA_HOME wins if set (must be Java KC_MIN_JAVA+). Otherwise the first
# Java KC_PREFERRED_JAVA+ among: Temurin/OpenJDK 25 and 21 under /usr/lib/jvm,
# JAVA_HOME, `java` on PATH; failing that, the first Java KC_MIN_JAVA+ among
# them (with a warning).
find_java_home() {
  local cand f checked=() fallback=""
  if [ -n "${KC_JAVA_HOME:-}" ]; then
    [ -x "$KC_JAVA_HOME/bin/java" ] || die "KC_JAVA_HOME=$KC_JAVA_HOME has no bin/java (JDK $KC_PREFERRED_JAVA+ wanted for Keycloak $KC_VERSION)"
    f=$(java_feature "$KC_JAVA_HOME/bin/java")
    [ "${f:-0}" -ge "$KC_MIN_JAVA" ] || die "JDK $KC_MIN_JAVA+ not found at KC_JAVA_HOME=$KC_JAVA_HOME (it is Java ${f:-unknown})"
    printf '%s\n' "$KC_JAVA_HOME"
    return
  fi
  local candidates=()
  for cand in /usr/lib/jvm/temurin-25-jdk* /usr/lib/jvm/java-25-openjdk* /usr/lib/jvm/temurin-21-jdk* /usr/lib/jvm/java-21-openjdk*; do
    [ -d "$cand" ] && candidates+=("$cand")
  done
  [ -n "${JAVA_HOME:-}" ] && candidates+=("$JAVA_HOME")
  if command -v java >/dev/null 2>&1; then
    cand=$(readlink -f "$(command -v java)")
    candidates+=("${cand%/bin/java}")
  fi
  for cand in "${candidates[@]}"; do
    [ -x "$cand/bin/java" ] || continue
    f=$(java_feature "$cand/bin/java")
    checked+=("$cand (Java ${f:-?})")
    if [ "${f:-0}" -ge "$KC_PREFERRED_JAVA" ]; then
      printf '%s\n' "$cand"
      return
    fi
    if [ -z "$fallback" ] && [ "${f:-0}" -ge "$KC_MIN_JAVA" ]; then
      fallback=$cand
    fi
  done
  if [ -n "$fallback" ]; then
    log "warning: no JDK $KC_PREFERRED_JAVA+ found, using $fallback (Java 17 works with Keycloak $KC_VERSION but is deprecated upstream)"
    printf '%s\n' "$fallback"
    return
  fi
  die "JDK $KC_PREFERRED_JAVA+ not found (checked: ${checked[*]:-nothing under /usr/lib/jvm, no JAVA_HOME, no java on PATH}); set KC_JAVA_HOME to a JDK $KC_PREFERRED_JAVA+ (or $KC_MIN_JAVA+)"
}
