# Build an app with `xtask --frozen build`, inside the Nix sandbox, from the
# sources its kraft.lock pins (fetched by Nix into a kraft mirror, see
# nix/mirror.nix). No git, no network: the tool finds every locked tree and
# archive in a store seeded from the mirror.
#
#   buildApp { src = ./.; app = "helloworld"; }
#
# `src` is the cargo workspace holding the app (its [workspace.metadata.kraft]
# says where apps live); `lock` defaults to <src>/apps/<app>/kraft.lock and
# must be the lock of that app (`--frozen` refuses a lock that does not match
# the Kraftfile). The result holds target/kraft/<app>/ (one directory per
# target).
{
  lib,
  stdenv,
  callPackage,
  xtask,
  cargo,
  bash,
  gnumake,
  flex,
  bison,
  python3,
  git,
  which,
  unzip,
  bc,
}:
{
  src,
  app,
  lock ? src + "/apps/${app}/kraft.lock",
  # `qemu/x86_64`; null: every target of the Kraftfile.
  target ? null,
  name ? "kraft-${app}",
  # Extra tools the app's build needs (on PATH, which build commands get
  # through KRAFT_SANDBOX_PATH).
  extraTools ? [ ],
}:
let
  mirror = callPackage ./mirror.nix { } {
    inherit lock;
    name = "kraft-mirror-${app}";
  };
  tools = [
    bash
    gnumake
    flex
    bison
    python3
    which
    unzip
    bc
  ] ++ extraTools;
in
stdenv.mkDerivation {
  inherit name src;
  nativeBuildInputs = [
    xtask
    cargo # `cargo metadata` finds the workspace
    git
  ] ++ tools;

  dontConfigure = true;
  # Unikernel images are not ELF programs for this host: leave them alone.
  dontFixup = true;

  buildPhase = ''
    runHook preBuild
    export HOME=$TMPDIR
    export CARGO_HOME=$TMPDIR/cargo-home
    export CARGO_TARGET_DIR=$TMPDIR/target
    export KRAFT_STORE=$TMPDIR/kraft-store
    unset KRAFT_MIRRORS KRAFT_REMOTE_CACHE KRAFT_CACHE_SIGNING_KEY KRAFT_CACHE_TRUSTED_KEYS CI
    ${mirror}/bin/kraft-seed-store --link "$KRAFT_STORE"
    export KRAFT_ARCHIVE_DIR=${mirror}/archives
    # The Nix sandbox is the sandbox; bubblewrap would not see /nix/store.
    export KRAFT_SANDBOX=none
    # Build commands get PATH=/usr/bin:/bin unless the tool is told otherwise;
    # here: the build's PATH (stdenv's cc, binutils, coreutils, sed, awk,
    # tar, patch ... plus the tools above).
    export KRAFT_SANDBOX_PATH=$PATH
    xtask --frozen build ${lib.escapeShellArg app} ${lib.optionalString (target != null) "--target ${lib.escapeShellArg target}"}
    runHook postBuild
  '';

  installPhase = ''
    runHook preInstall
    mkdir -p $out
    cp -r "$CARGO_TARGET_DIR/kraft/${app}/." $out/
    runHook postInstall
  '';

  passthru = { inherit mirror; };
}
