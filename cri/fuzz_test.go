package cri

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
)

// rpc is one CRI method as gRPC dispatches it: the generated handler,
// which decodes the request and calls the server.
type rpc struct {
	name   string
	unary  func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error)
	stream func(srv any, stream grpc.ServerStream) error
	// creates: a request that passes validation would make a real pod;
	// the fuzzer calls it only with requests that validation refuses.
	creates bool
}

// allRPCs lists every method of both CRI services, so that a method added
// to the API is fuzzed without anyone remembering to.
func allRPCs() []rpc {
	var out []rpc
	for _, desc := range []grpc.ServiceDesc{runtimeapi.RuntimeService_ServiceDesc, runtimeapi.ImageService_ServiceDesc} {
		for _, m := range desc.Methods {
			out = append(out, rpc{name: m.MethodName, unary: m.Handler, creates: m.MethodName == "RunPodSandbox"})
		}
		for _, st := range desc.Streams {
			out = append(out, rpc{name: st.StreamName, stream: st.Handler})
		}
	}
	return out
}

// fuzzStream is a server stream whose one request is the fuzz input and
// whose responses are dropped.
type fuzzStream struct {
	ctx  context.Context
	recv func(any) error
	done bool
}

func (f *fuzzStream) SetHeader(metadata.MD) error  { return nil }
func (f *fuzzStream) SendHeader(metadata.MD) error { return nil }
func (f *fuzzStream) SetTrailer(metadata.MD)       {}
func (f *fuzzStream) Context() context.Context     { return f.ctx }
func (f *fuzzStream) SendMsg(any) error            { return nil }
func (f *fuzzStream) RecvMsg(m any) error {
	if f.done {
		return io.EOF
	}
	f.done = true
	return f.recv(m)
}

// fuzzServer is a real Server on a temporary root and state with nothing
// in it: every id is unknown, and no request may reach another host.
func fuzzServer(t testing.TB) *Server {
	dir, err := os.MkdirTemp("/run", "berth-fuzz-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	regConf := filepath.Join(dir, "registries.conf")
	if err := os.WriteFile(regConf, []byte("unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	// A pull of any name but a loopback one goes to a proxy that is not
	// there: the fuzzer's made-up registries are never looked up or dialed.
	t.Setenv("HTTPS_PROXY", "http://127.0.0.1:9")
	t.Setenv("HTTP_PROXY", "http://127.0.0.1:9")
	t.Setenv("NO_PROXY", "")
	cfg := DefaultConfig()
	cfg.Root = filepath.Join(dir, "root")
	cfg.State = filepath.Join(dir, "state")
	cfg.Socket = filepath.Join(dir, "berth.sock")
	cfg.CgroupDriver = string(cgroups.Cgroupfs)
	cfg.CgroupParent = "/berth-test/fuzz"
	cfg.CNIConfDir = filepath.Join(dir, "cni")
	cfg.CNIConfTemplate = ""
	cfg.CNITimeout = Duration{time.Second}
	cfg.RegistriesConf = regConf
	cfg.RegistriesConfDir = filepath.Join(dir, "registries.d")
	cfg.PolicyFile = policy
	// Nothing is ever started: a pod that got that far would fail here.
	cfg.RuntimePath, cfg.ShimPath, cfg.PausePath = "/bin/false", "/bin/false", "/bin/false"
	s, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), "fuzz")
	if err != nil {
		t.Fatalf("start a server to fuzz: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// FuzzCRIRequests sends every CRI method arbitrary requests (decoded from
// the fuzz input as gRPC would) to a real, empty server. None may panic,
// and every error must be a gRPC status whose code says what went wrong:
// Unknown or Internal for a bad request is a finding. RunPodSandbox and
// CreateContainer requests are also checked by their validators alone,
// which must pass or answer InvalidArgument.
func FuzzCRIRequests(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("the server needs root (its state dirs, cgroups and network namespaces)")
	}
	rpcs := allRPCs()
	id := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "ns", Uid: "u"}, Hostname: "p",
		LogDirectory: "/var/log/pods/p", DnsConfig: &runtimeapi.DNSConfig{Servers: []string{"10.0.0.10"}, Searches: []string{"svc"}},
		PortMappings: []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: 8080}},
		Linux: &runtimeapi.LinuxPodSandboxConfig{CgroupParent: "/kubepods/pod1", Sysctls: map[string]string{"net.ipv4.ip_forward": "1"},
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}}},
	}
	ctrCfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "c"}, Image: &runtimeapi.ImageSpec{Image: "127.0.0.1:1/busybox"},
		Command: []string{"sh"}, Args: []string{"-c", "true"}, WorkingDir: "/",
		Envs:   []*runtimeapi.KeyValue{{Key: "A", Value: []byte("b")}},
		Mounts: []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: "/tmp/data", Readonly: true}},
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources:       &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, MemoryLimitInBytes: 1 << 26},
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Capabilities: &runtimeapi.Capability{AddCapabilities: []string{"NET_ADMIN"}}},
		},
		LogPath: "c.log",
	}
	seeds := map[string]proto.Message{
		"RunPodSandbox":            &runtimeapi.RunPodSandboxRequest{Config: podCfg},
		"CreateContainer":          &runtimeapi.CreateContainerRequest{PodSandboxId: id, Config: ctrCfg, SandboxConfig: podCfg},
		"StopContainer":            &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 1},
		"RemovePodSandbox":         &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id[:12]},
		"ExecSync":                 &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"true"}, Timeout: 1},
		"Exec":                     &runtimeapi.ExecRequest{ContainerId: id, Cmd: []string{"sh"}, Stdout: true},
		"PortForward":              &runtimeapi.PortForwardRequest{PodSandboxId: id, Port: []int32{80}},
		"PullImage":                &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "127.0.0.1:1/busybox:latest"}, Auth: &runtimeapi.AuthConfig{Auth: "dXNlcjpwYXNz"}},
		"ImageStatus":              &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "busybox"}, Verbose: true},
		"RemoveImage":              &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "sha256:" + id}},
		"UpdateRuntimeConfig":      &runtimeapi.UpdateRuntimeConfigRequest{RuntimeConfig: &runtimeapi.RuntimeConfig{NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: "10.1.0.0/24"}}},
		"ListContainers":           &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{Id: "01", LabelSelector: map[string]string{"a": "b"}}},
		"UpdateContainerResources": &runtimeapi.UpdateContainerResourcesRequest{ContainerId: id, Linux: &runtimeapi.LinuxContainerResources{CpuShares: 2}},
	}
	for i, r := range rpcs {
		var data []byte
		if m, ok := seeds[r.name]; ok {
			var err error
			if data, err = proto.Marshal(m); err != nil {
				f.Fatal(err)
			}
		}
		f.Add(byte(i), data)
	}
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, which byte, data []byte) {
		r := rpcs[int(which)%len(rpcs)]
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		// A request that does not decode is gRPC's to refuse, before berth.
		undecodable := false
		dec := func(m any) error {
			err := proto.Unmarshal(data, m.(proto.Message))
			undecodable = undecodable || err != nil
			return err
		}
		checkValidators(t, data)
		var err error
		switch {
		case r.creates:
			var req runtimeapi.RunPodSandboxRequest
			if dec(&req) != nil || validatePodConfig(req.Config, cgroups.Cgroupfs) == nil {
				return
			}
			_, err = r.unary(s, ctx, dec, nil)
		case r.unary != nil:
			_, err = r.unary(s, ctx, dec, nil)
		default:
			err = r.stream(s, &fuzzStream{ctx: ctx, recv: dec})
		}
		if err == nil || undecodable {
			return
		}
		st, ok := status.FromError(err)
		if !ok {
			t.Fatalf("%s: error without a gRPC status: %v", r.name, err)
		}
		switch st.Code() {
		case codes.Unknown, codes.Internal:
			t.Fatalf("%s: %v for a request the server should have classified: %v", r.name, st.Code(), st.Message())
		}
	})
}

// checkValidators runs the pod and container validators on the input read
// as a CreateContainerRequest: they must not panic, and what they refuse
// is InvalidArgument.
func checkValidators(t *testing.T, data []byte) {
	var req runtimeapi.CreateContainerRequest
	if proto.Unmarshal(data, &req) != nil {
		return
	}
	for what, err := range map[string]error{
		"pod config":       validatePodConfig(req.SandboxConfig, cgroups.Cgroupfs),
		"container config": validateContainerConfig(req.Config, req.SandboxConfig),
	} {
		if err != nil && status.Code(toStatus(err)) != codes.InvalidArgument {
			t.Fatalf("%s refused with %v, want InvalidArgument: %v", what, status.Code(toStatus(err)), err)
		}
	}
}
