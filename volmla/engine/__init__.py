"""The chunked engine every stage uses: array backend, cluster, halo map, block scans."""
