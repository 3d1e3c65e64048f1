package runtime

import specs "github.com/opencontainers/runtime-spec/specs-go"

func specMount(dst, typ, src string, opts ...string) specs.Mount {
	return specs.Mount{Destination: dst, Type: typ, Source: src, Options: opts}
}
