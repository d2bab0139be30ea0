package qemu

import (
	"fmt"
	"strings"

	"github.com/solstice-ci/solstice/internal/vm"
)

// Fixed PCI slots: illumos names NICs after their PCI path, so the disk and
// the NIC keep the same addresses on every boot of every image.
const (
	pciNIC  = "0x3"
	pciDisk = "0x4"
	pciSeed = "0x5"
)

// seedCD is the device id of the CD drive that holds an ISO seed.
const seedCD = "seedcd"

// layout is where a machine's files live (all inside its runtime folder).
type layout struct {
	Dir        string
	Overlay    string
	Seed       string
	QMP        string
	Pidfile    string
	Console    string
	PasstSock  string
	PasstPid   string
	PasstLog   string
	HandleFile string
}

func newLayout(dir string) layout {
	return layout{
		Dir:        dir,
		Overlay:    dir + "/disk.qcow2",
		Seed:       dir + "/seed.img",
		QMP:        dir + "/qmp.sock",
		Pidfile:    dir + "/qemu.pid",
		Console:    dir + "/console.log",
		PasstSock:  dir + "/net.sock",
		PasstPid:   dir + "/passt.pid",
		PasstLog:   dir + "/passt.log",
		HandleFile: dir + "/handle.json",
	}
}

// qemuArgs is the QEMU command line (without the binary) for one machine.
// accel is "kvm" or "tcg"; sshPort is the host loopback port forwarded to
// the guest's port 22 in network mode "none" (passt does it in "egress").
func qemuArgs(spec vm.Spec, l layout, accel, network string, sshPort int) ([]string, error) {
	e := spec.Image
	cpus, mem := e.CPUs, e.MemoryMB
	if spec.CPUs > 0 {
		cpus = spec.CPUs
	}
	if spec.MemoryMB > 0 {
		mem = spec.MemoryMB
	}
	if cpus <= 0 {
		cpus = 1
	}
	if mem <= 0 {
		mem = 1024
	}
	a := []string{
		"-name", "solstice-" + spec.JobID + ",process=solstice-vm",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
	}
	switch e.Firmware {
	case "", "bios":
		a = append(a, "-machine", "pc,accel="+accel)
	case "uefi":
		// The OVMF code is read-only and shared; a machine that needs
		// persistent variables gets its own copy in a later version.
		a = append(a, "-machine", "pc,accel="+accel,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd")
	default:
		return nil, fmt.Errorf("image %s: unknown firmware %q (want bios or uefi)", e.Label, e.Firmware)
	}
	a = append(a, "-cpu", cpuModel(accel))
	if e.OS == "illumos" {
		// illumos takes vanished timer ticks for a stalled system.
		a = append(a, "-rtc", "base=utc,driftfix=slew")
		if accel == "kvm" {
			a = append(a, "-global", "kvm-pit.lost_tick_policy=delay")
		}
	}
	a = append(a,
		"-smp", fmt.Sprint(cpus), "-m", fmt.Sprint(mem),
		"-pidfile", l.Pidfile,
		"-qmp", "unix:"+l.QMP+",server=on,wait=off",
		"-serial", "file:"+l.Console,
	)
	if e.Boot == "kernel" {
		if spec.Kernel == "" || spec.Initrd == "" {
			return nil, fmt.Errorf("image %s boots a kernel directly, but its kernel and initrd are not in the cache", e.Label)
		}
		a = append(a, "-kernel", spec.Kernel, "-initrd", spec.Initrd, "-append", e.KernelArgs)
	}
	// Disk: the per-job overlay. cache=unsafe is right for a disk thrown
	// away after the job: nothing needs to survive a host crash.
	a = append(a, "-drive", "file="+l.Overlay+",if=none,id=disk0,format=qcow2,cache=unsafe,discard=unmap")
	switch e.Disk {
	case "", "virtio":
		a = append(a, "-device", "virtio-blk-pci,drive=disk0,bus=pci.0,addr="+pciDisk+",bootindex=1")
	case "sata":
		a = append(a, "-device", "ahci,id=ahci0,bus=pci.0,addr="+pciDisk,
			"-device", "ide-hd,drive=disk0,bus=ahci0.0,bootindex=1")
	default:
		return nil, fmt.Errorf("image %s: unknown disk bus %q (want virtio or sata)", e.Label, e.Disk)
	}
	// Seed: a CD for ISO9660, a small disk for FAT.
	a = append(a, "-drive", "file="+l.Seed+",if=none,id=seed0,format=raw,readonly=on")
	switch e.Seed {
	case "", "iso":
		a = append(a, "-device", "ide-cd,id="+seedCD+",drive=seed0,bus=ide.1,unit=0")
	case "fat":
		a = append(a, "-device", "virtio-blk-pci,drive=seed0,bus=pci.0,addr="+pciSeed)
	default:
		return nil, fmt.Errorf("image %s: unknown seed kind %q (want iso or fat)", e.Label, e.Seed)
	}
	switch network {
	case vm.NetworkNone:
		// restrict=on: the guest reaches nothing; only the forward works.
		a = append(a, "-netdev", fmt.Sprintf("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22", sshPort))
	case vm.NetworkEgress:
		// One end of a socket pair made by Start, passed as fd 3 (passt
		// holds the other end): no socket file, nothing to race for.
		a = append(a, "-netdev", "stream,id=net0,server=off,addr.type=fd,addr.str=3")
	default:
		return nil, fmt.Errorf("unknown network mode %q (want %s or %s)", network, vm.NetworkEgress, vm.NetworkNone)
	}
	nic := e.NIC
	if nic == "" {
		nic = "virtio-net-pci"
	}
	switch nic {
	case "virtio-net-pci", "e1000":
	default:
		return nil, fmt.Errorf("image %s: unknown nic %q (want virtio-net-pci or e1000)", e.Label, nic)
	}
	a = append(a, "-device", fmt.Sprintf("%s,netdev=net0,bus=pci.0,addr=%s,mac=%s", nic, pciNIC, macFor(spec.JobID)))
	return a, nil
}

// passtArgs is the passt command line for network mode "egress": outbound
// connections work, but --no-map-gw keeps the gateway address from leading
// to the host's own loopback, where the store and the broker listen.
func passtArgs(l layout, sshPort int) []string {
	return []string{
		"--foreground", "--quiet",
		"--no-map-gw",
		"--fd", "3", // the other end of QEMU's socket pair
		"--tcp-ports", fmt.Sprintf("127.0.0.1/%d:22", sshPort),
	}
}

// macFor is a stable locally administered MAC address per job.
func macFor(jobID string) string {
	var h uint32 = 2166136261
	for i := 0; i < len(jobID); i++ {
		h ^= uint32(jobID[i])
		h *= 16777619
	}
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", byte(h>>16), byte(h>>8), byte(h))
}

// commandLine renders args for logs and golden files.
func commandLine(bin string, args []string) string {
	return bin + " " + strings.Join(args, " ")
}

// cpuModel is the -cpu of a machine: the host's CPU under KVM, every
// feature TCG can emulate otherwise. The KVM probe uses it too: on some
// hosts KVM runs a VM but not with the host's CPU model.
func cpuModel(accel string) string {
	if accel == "kvm" {
		return "host"
	}
	return "max"
}
