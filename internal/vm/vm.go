// Package vm creates, reaches and destroys the virtual machines jobs run in.
// The QEMU implementation runs qemu-system-* directly (no libvirt).
package vm

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/solstice-ci/solstice/internal/vm/image"
)

// Network modes.
const (
	NetworkEgress = "egress" // passt --no-map-gw: outbound works, host loopback does not
	NetworkNone   = "none"   // SLIRP restrict=on: only the SSH forward works
)

// Spec describes the VM of one job.
type Spec struct {
	// JobID names the VM and tags its process and files, so a reaper can
	// find them after a crash.
	JobID string
	// Image is the catalog entry; BaseImage the local path of its cached
	// base disk (image.Cache resolves it).
	Image     image.Entry
	BaseImage string
	// Kernel and Initrd are the local paths of the kernel and initrd for
	// images that boot with QEMU's direct kernel boot (Image.Boot "kernel").
	Kernel, Initrd string
	// Network is NetworkEgress or NetworkNone; empty means the image's default.
	Network string
	// CPUs and MemoryMB override the image's values when > 0.
	CPUs     int
	MemoryMB int
	// BootTimeout bounds WaitReady; 0 means the image's value.
	BootTimeout time.Duration
}

// Handle is what it takes to find a VM again after the orchestrator
// restarted: enough to reap it (the SSH key is never persisted, so a VM
// whose orchestrator died is destroyed, not reattached). It is stored as
// JSON in the job's store row.
type Handle struct {
	Version   int       `json:"version"`
	JobID     string    `json:"job_id"`
	Pid       int       `json:"pid"`
	Dir       string    `json:"dir"` // runtime folder: overlay, seed, QMP socket, pidfile, console log
	QMP       string    `json:"qmp"`
	Overlay   string    `json:"overlay"`
	SSHPort   int       `json:"ssh_port"`
	StartedAt time.Time `json:"started_at"`
}

// Backend makes machines. The QEMU backend is the real one; tests of the
// orchestrator's many-job paths may use a local-process stand-in.
type Backend interface {
	// Create prepares a machine for spec (overlay, seed, key) without
	// starting it. Destroy must be called on the result even if Start fails.
	Create(ctx context.Context, spec Spec) (Machine, error)
	// Reap kills the machines left by earlier processes of this host (found
	// by our tag and their pidfiles) for which keep returns false, removes
	// their folders, and returns the handles it reaped.
	Reap(ctx context.Context, keep func(Handle) bool) ([]Handle, error)
}

// Machine is one VM. Its methods are safe to call from several goroutines;
// Stop and Destroy may be called at any time, also concurrently with Exec
// (which then fails).
type Machine interface {
	// Handle describes the machine for persistence; valid after Create,
	// Pid and StartedAt after Start.
	Handle() Handle
	// GuestOS and GuestArch name the agent build the guest needs.
	GuestOS() string
	GuestArch() string
	// Start spawns the VM. It returns once the process runs.
	Start(ctx context.Context) error
	// WaitReady waits until the guest answers on SSH, up to the boot
	// timeout; the error then carries the last lines of the serial console.
	WaitReady(ctx context.Context) error
	// Exec runs cmd (a shell command line) in the guest as root, with stdin
	// (may be nil) and the output streamed to stdout and stderr as it comes.
	// It returns the command's exit code; err is set only when the command
	// could not run or its connection broke. Cancelling ctx kills the command.
	Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error)
	// CopyIn writes data to path in the guest with mode.
	CopyIn(ctx context.Context, r io.Reader, path string, mode os.FileMode) error
	// Stop powers the guest off: ACPI powerdown (or the image's shutdown
	// command), a deadline, then kill. Idempotent.
	Stop(ctx context.Context) error
	// Destroy stops the machine if needed and removes everything it made:
	// no process, overlay, seed, socket or key survives. Idempotent.
	Destroy(ctx context.Context) error
}
