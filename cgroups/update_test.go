package cgroups

import (
	"testing"

	ocg "github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func p[T any](v T) *T { return &v }

func TestMergeResourcesKeepsWhatTheUpdateLeavesOut(t *testing.T) {
	base := func() *ocg.Resources {
		return &ocg.Resources{
			Memory: 64 << 20, MemorySwap: 128 << 20, CpuShares: 512, CpuQuota: 20000, CpuPeriod: 100000,
			CpusetCpus: "0", PidsLimit: p[int64](100), BlkioWeight: 300,
		}
	}
	cases := []struct {
		name   string
		update *specs.LinuxResources
		check  func(t *testing.T, r *ocg.Resources)
	}{
		{"nil update", nil, func(t *testing.T, r *ocg.Resources) {
			if r.Memory != 64<<20 || r.CpuShares != 512 {
				t.Errorf("%+v", r)
			}
		}},
		{"memory only", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: p[int64](256 << 20)}},
			func(t *testing.T, r *ocg.Resources) {
				if r.Memory != 256<<20 || r.MemorySwap != 128<<20 || r.CpuShares != 512 || *r.PidsLimit != 100 {
					t.Errorf("%+v", r)
				}
			}},
		{"unlimited memory without swap", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: p[int64](-1)}},
			func(t *testing.T, r *ocg.Resources) {
				if r.Memory != -1 || r.MemorySwap != 0 {
					t.Errorf("memory %d swap %d", r.Memory, r.MemorySwap)
				}
			}},
		{"quota alone keeps period", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: p[int64](50000)}},
			func(t *testing.T, r *ocg.Resources) {
				if r.CpuQuota != 50000 || r.CpuPeriod != 100000 || r.CpusetCpus != "0" {
					t.Errorf("%+v", r)
				}
			}},
		{"shares set v2 weight", &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: p[uint64](1024)}},
			func(t *testing.T, r *ocg.Resources) {
				if r.CpuShares != 1024 || r.CpuWeight != ocg.ConvertCPUSharesToCgroupV2Value(1024) {
					t.Errorf("shares %d weight %d", r.CpuShares, r.CpuWeight)
				}
			}},
		{"pids", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: p[int64](7)}},
			func(t *testing.T, r *ocg.Resources) {
				if *r.PidsLimit != 7 {
					t.Errorf("pids %d", *r.PidsLimit)
				}
			}},
		{"throttle upsert", &specs.LinuxResources{BlockIO: &specs.LinuxBlockIO{
			ThrottleReadBpsDevice: []specs.LinuxThrottleDevice{{Rate: 10}, {Rate: 20}},
		}}, func(t *testing.T, r *ocg.Resources) {
			// Same major:minor twice: the last wins, one entry.
			if len(r.BlkioThrottleReadBpsDevice) != 1 || r.BlkioThrottleReadBpsDevice[0].Rate != 20 {
				t.Errorf("%+v", r.BlkioThrottleReadBpsDevice)
			}
		}},
		{"hugepages and unified", &specs.LinuxResources{
			HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 1 << 21}},
			Unified:        map[string]string{"memory.high": "1000000"},
		}, func(t *testing.T, r *ocg.Resources) {
			if len(r.HugetlbLimit) != 1 || r.Unified["memory.high"] != "1000000" {
				t.Errorf("%+v %+v", r.HugetlbLimit, r.Unified)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := base()
			if err := MergeResources(r, tc.update); err != nil {
				t.Fatal(err)
			}
			if !r.SkipDevices && tc.update != nil {
				t.Error("an update must not touch device rules")
			}
			tc.check(t, r)
		})
	}
	if err := MergeResources(nil, &specs.LinuxResources{}); err == nil {
		t.Error("nil destination accepted")
	}
}

func TestParseDriver(t *testing.T) {
	for in, want := range map[string]Driver{"": Cgroupfs, "cgroupfs": Cgroupfs, "systemd": Systemd} {
		if got, err := ParseDriver(in); err != nil || got != want {
			t.Errorf("ParseDriver(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseDriver("cgroupv3"); err == nil {
		t.Error("unknown driver accepted")
	}
}

func TestHostModeMatchesMounts(t *testing.T) {
	m := HostMode()
	if m.Version() != 1 && m.Version() != 2 {
		t.Fatalf("mode %v", m)
	}
	t.Logf("this host runs cgroup %s", m)
}
