package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
)

// privateUmask makes every file and directory this process (and its
// children: the local clickhouse-server) creates its owner's alone. The data
// directory holds the embedded broker's log (notify.ingest in clear), goka's
// state, the generated API and master keys and ClickHouse's data; the
// libraries writing most of it (kfake, LevelDB) ask for 0755/0644 and leave
// the rest to the umask. No notifyd command writes a file meant for others.
func privateUmask() { syscall.Umask(0o077) }

// groupOther are the permission bits a data directory entry must not have.
const groupOther fs.FileMode = 0o077

// privateDataDir takes group and other permissions away from the data
// directory and every entry under it: a data directory written by an older
// notifyd (0755/0644) is tightened once at start. A missing one is left to be
// created (0700) by whatever writes it first. Symbolic links inside are not
// followed. It logs how many entries it fixed, and warns about entries it
// could not fix (owned by another user, such as a volume's mount point):
// notifyd still starts, as it did before.
func privateDataDir(dir string, log *slog.Logger) error {
	// A data directory that is a link to one is walked where it points.
	root, err := filepath.EvalSymlinks(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("data directory %s: %w", dir, err)
	}
	fixed, left := 0, 0
	var first error
	note := func(err error) {
		left++
		if first == nil {
			first = err
		}
	}
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			note(err) // an unreadable directory: the walk goes on
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil // a link's own mode means nothing; its target is not ours to change
		}
		info, err := d.Info()
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				note(err)
			}
			return nil
		}
		mode := info.Mode()
		if mode.Perm()&groupOther == 0 {
			return nil
		}
		// Only group and other go; setuid, setgid and sticky stay.
		if err := os.Chmod(path, mode.Perm()&^groupOther|mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			note(err)
			return nil
		}
		fixed++
		return nil
	})
	if fixed > 0 {
		log.Warn("data directory was open to group or others; removed their permissions", "dir", dir, "fixed", fixed)
	}
	if left > 0 {
		log.Warn("data directory: some entries could not be made private; chown them to this user or fix them by hand",
			"dir", dir, "left", left, "first", first)
	}
	return nil
}
