# A kraft.lock's sources, fetched by Nix, laid out as kraft-xtask reads them.
#
#   $out/store/trees/<tree-blake3>            -> the component's tree (a Nix store path)
#   $out/store/nar/<tree-blake3>              the lock's nar-hash (what the tool records)
#   $out/store/archives/<sha256>/<name>       -> the origin archive
#   $out/archives/<name>                      -> the origin archive (for KRAFT_ARCHIVE_DIR)
#   $out/bin/kraft-seed-store [--link] [DIR]  put all of the above into a writable kraft store
#
# `store/` is a pre-filled kraft store: with it, `xtask --frozen` finds every
# locked tree (`Fetcher::git_tree` reuses `trees/<blake3>` when
# `nar/<blake3>` holds the locked NAR hash) and archive without git or the
# network. The tool opens its store read-write (it creates tmp/, locks/,
# blobs/), so it cannot use `$out/store` in /nix/store directly; run
# `kraft-seed-store` to copy (or, with --link, symlink) the entries into
# $KRAFT_STORE (default: the tool's default store).
#
# A mirror of bare git repositories (for KRAFT_MIRRORS) is not produced: Nix
# fetches trees, not history, and a commit id cannot be re-made from a tree.
#
# Takes from nixpkgs only { runCommandLocal, runtimeShell, fetchgit, fetchurl }
# (callPackage fills them); everything else is builtins, so tests can build it
# with a stand-in runCommandLocal and `fixedOutput = false`.
{
  runCommandLocal,
  runtimeShell,
  fetchgit,
  fetchurl,
}:
{
  # Path to kraft.lock (or its text, or the parsed attrset).
  lock,
  name ? "kraft-mirror",
  # true: nixpkgs' fixed-output fetchers (fetched at build time, like any
  # source; `git checkout` semantics, as the tool's export). false:
  # builtins.fetchGit/fetchurl at evaluation time (needs no builder network;
  # honours `mirrors`/`archiveDir`, see from-kraft-lock.nix).
  fixedOutput ? true,
  mirrors ? { },
  archiveDir ? null,
}:
let
  inherit (builtins) attrNames attrValues concatStringsSep filter groupBy length listToAttrs replaceStrings;
  concatMapStrings = f: l: concatStringsSep "" (map f l);
  q = s: "'" + replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  specs = import ./from-kraft-lock.nix (
    {
      inherit lock mirrors archiveDir;
      fetch = true;
    }
    // (if !fixedOutput then { } else {
      fetchGit =
        args:
        fetchgit {
          inherit (args) url rev name;
          # fetchgit's hash is the NAR hash of the checkout without .git:
          # exactly the lock's nar-hash.
          hash = args.narHash;
          fetchSubmodules = false; # the tool skips gitlinks too
          fetchLFS = false;
        };
      fetchurl = args: fetchurl { inherit (args) url sha256 name; };
    })
  );

  # One tree per blake3 (two components may pin the same tree).
  trees = attrValues (listToAttrs (map (c: { name = c.treeBlake3; value = c; }) specs.components));

  # archives/<name> must be unambiguous for KRAFT_ARCHIVE_DIR.
  byName = groupBy (a: a.name) specs.archives;
  clashes = filter (n: length byName.${n} > 1) (attrNames byName);
  checked =
    if clashes == [ ] then
      specs.archives
    else
      throw "kraft mirror: archives with the same file name and different sha256: ${concatStringsSep ", " clashes}";
in
runCommandLocal name
  {
    passthru = { inherit specs; };
  }
  ''
    mkdir -p $out/store/trees $out/store/nar $out/store/archives $out/archives $out/bin
    ${concatMapStrings (c: ''
      ln -s ${c.src} $out/store/trees/${c.treeBlake3}
      printf '%s' ${q c.narHash} > $out/store/nar/${c.treeBlake3}
    '') trees}
    ${concatMapStrings (a: ''
      mkdir -p $out/store/archives/${a.sha256}
      ln -s ${a.file} $out/store/archives/${a.sha256}/${q a.name}
      ln -s ${a.file} $out/archives/${q a.name}
    '') checked}

    cat > $out/bin/kraft-seed-store <<'EOF'
    #!${runtimeShell}
    # Put this mirror's trees, NAR records and archives into a writable kraft
    # store: copies (default; survive nix-collect-garbage) or, with --link,
    # symlinks into /nix/store (cheap; for throwaway stores such as a build's).
    set -eu
    link=
    if [ "''${1-}" = --link ]; then link=1; shift; fi
    dest=''${1:-''${KRAFT_STORE:-''${XDG_CACHE_HOME:-$HOME/.cache}/kraft-xtask}}
    src=@out@/store
    mkdir -p "$dest/trees" "$dest/nar" "$dest/archives" "$dest/tmp"
    for t in "$src"/trees/*; do
      [ -e "$t" ] || continue
      b=''${t##*/}
      if [ ! -e "$dest/trees/$b" ]; then
        if [ -n "$link" ]; then
          ln -s "$(readlink "$t")" "$dest/tmp/seed-$b.$$"
        else
          # Modes are kept (owner exec bits count in the tree hash); the
          # entry appears by one rename, as the store's invariants ask.
          cp -R -H "$t" "$dest/tmp/seed-$b.$$"
          # Moving a directory to another parent needs write permission on it.
          chmod u+w "$dest/tmp/seed-$b.$$"
        fi
        mv -T "$dest/tmp/seed-$b.$$" "$dest/trees/$b"
        [ -n "$link" ] || chmod 0555 "$dest/trees/$b"
      fi
      cp "$src/nar/$b" "$dest/nar/$b.$$" && chmod u+w "$dest/nar/$b.$$" && mv -f "$dest/nar/$b.$$" "$dest/nar/$b"
    done
    for d in "$src"/archives/*; do
      [ -e "$d" ] || continue
      s=''${d##*/}
      mkdir -p "$dest/archives/$s"
      for f in "$d"/*; do
        n=''${f##*/}
        [ -e "$dest/archives/$s/$n" ] && continue
        if [ -n "$link" ]; then ln -s "$(readlink "$f")" "$dest/archives/$s/$n"
        else cp -L "$f" "$dest/archives/$s/.$n.$$" && mv "$dest/archives/$s/.$n.$$" "$dest/archives/$s/$n"; fi
      done
    done
    echo "kraft store $dest: seeded from $src" >&2
    EOF
    sed -i "s|@out@|$out|" $out/bin/kraft-seed-store
    chmod +x $out/bin/kraft-seed-store
  ''
