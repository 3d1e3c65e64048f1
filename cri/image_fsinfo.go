package cri

import (
	"context"
	"errors"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/image"
)

// ImageFsInfo reports what images and containers' writable layers use.
func (s *Server) ImageFsInfo(ctx context.Context, req *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	u, err := s.images.Usage()
	if err != nil {
		return nil, toStatus(err)
	}
	now := time.Now().UnixNano()
	resp := &runtimeapi.ImageFsInfoResponse{ImageFilesystems: []*runtimeapi.FilesystemUsage{{
		Timestamp: now, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: u.Mountpoint},
		UsedBytes: &runtimeapi.UInt64Value{Value: uint64(u.Bytes)}, InodesUsed: &runtimeapi.UInt64Value{Value: uint64(u.Inodes)},
	}}}
	var bytes, inodes int64
	for _, c := range s.store.listContainers() {
		b, i, err := s.writableUsage(c.ID)
		if err != nil && !errors.Is(err, image.ErrNotFound) {
			continue
		}
		bytes += b
		inodes += i
	}
	resp.ContainerFilesystems = []*runtimeapi.FilesystemUsage{{
		Timestamp: now, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: u.Mountpoint},
		UsedBytes: &runtimeapi.UInt64Value{Value: uint64(bytes)}, InodesUsed: &runtimeapi.UInt64Value{Value: uint64(inodes)},
	}}
	return resp, nil
}
