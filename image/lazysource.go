package image

import (
	"context"
	"fmt"
	"strings"

	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/types"

	"github.com/berth-runtime/berth/image/lazy"
)

// LazySource opens the registry source of a lazily pulled layer's image
// with the pull's configuration, which r carries: registries.conf and its
// mirrors, auth.json and the pull's own credentials apply to the lazy
// fetches as they did to the pull. It is how berth-lazy reaches the
// registry. Only docker:// references are fetched lazily.
func LazySource(ctx context.Context, r lazy.Remote) (types.ImageSource, error) {
	name, ok := strings.CutPrefix(r.Ref, "docker://")
	if !ok {
		return nil, fmt.Errorf("lazy layer source %q: only docker:// references are fetched lazily", r.Ref)
	}
	ref, err := docker.ParseReference("//" + name)
	if err != nil {
		return nil, fmt.Errorf("lazy layer source %q: %w", r.Ref, err)
	}
	auth := &Auth{Username: r.Username, Password: r.Password, IdentityToken: r.IdentityToken}
	sys := &types.SystemContext{
		SystemRegistriesConfPath:    r.RegistriesConf,
		SystemRegistriesConfDirPath: r.RegistriesConfDir,
		AuthFilePath:                r.AuthFile,
		DockerRegistryUserAgent:     r.UserAgent,
		DockerAuthConfig:            auth.dockerAuth(),
		DockerBearerRegistryToken:   r.RegistryToken,
	}
	src, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		return nil, fmt.Errorf("lazy layer source %q: %w", r.Ref, err)
	}
	return src, nil
}
