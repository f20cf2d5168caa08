"""On-disk layouts of the ReID benchmarks: folders, file names, cameras (as torchreid reads them).

Market-1501: ``<root>/market1501/Market-1501-v15.09.15/{bounding_box_train,query,
bounding_box_test}/PPPP_cCsS_FFFFFF_BB.jpg`` (person, camera 1-6, sequence, frame, box);
pid -1 marks junk boxes, pid 0 distractors. DukeMTMC-reID: ``<root>/dukemtmc-reid/
DukeMTMC-reID/...`` with names ``PPPP_cC_fFFFFFFF.jpg`` (cameras 1-8). The same pattern
``([-\\d]+)_c(\\d)`` reads both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kdbench.benchmarks.errors import DatasetError

# The harness's split names -> the folder of each split.
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
NAME_PATTERN = re.compile(r"([-\d]+)_c(\d)")
JUNK_PID = -1
DISTRACTOR_PID = 0
SYNTHETIC_MARKER = "kdbench_synthetic.txt"  # written by the fixture writer, never by a release


@dataclass(frozen=True)
class Layout:
    """Where a ReID release keeps its splits and how its files are named."""

    name: str  # registry name
    title: str
    dataset_dir: str  # folder under the root
    version_dir: str  # release folder inside it (optional on disk)
    cameras: int
    name_format: str  # example file name, for messages
    how_to_get: str

    def candidates(self, root: str | Path) -> list[Path]:
        """Folders that may hold the three split folders, in the order they are tried."""
        root = Path(root).expanduser().resolve()
        return [root / self.dataset_dir / self.version_dir, root / self.dataset_dir,
                root / self.version_dir, root]

    def find(self, root: str | Path) -> Path | None:
        """The first candidate folder that has all three split folders, or None."""
        for folder in self.candidates(root):
            if all((folder / d).is_dir() for d in SPLIT_DIRS.values()):
                return folder
        return None

    def expected(self) -> str:
        dirs = ",".join(SPLIT_DIRS.values())
        return (f"<root>/{self.dataset_dir}/{self.version_dir}/{{{dirs}}}/ with JPEG files "
                f"named like {self.name_format}")

    def file_name(self, pid: int, camera: int, frame: int, box: int = 1) -> str:
        """A file name in this layout (``camera`` 1-based, as on disk)."""
        person = str(pid) if pid == JUNK_PID else f"{pid:04d}"
        if self.name == "dukemtmc_reid":
            return f"{person}_c{camera}_f{frame:07d}.jpg"
        return f"{person}_c{camera}s{1 + frame // 1000 % 6}_{frame:06d}_{box:02d}.jpg"

    def parse(self, file_name: str) -> tuple[int, int]:
        """(person id, 0-based camera id) of a file name; a clear error when it does not fit."""
        found = NAME_PATTERN.match(file_name)
        if found is None:
            raise DatasetError(f"{self.title}: cannot read person and camera from {file_name!r}; "
                               f"expected names like {self.name_format}")
        pid, camera = int(found.group(1)), int(found.group(2))
        if not 1 <= camera <= self.cameras:
            raise DatasetError(f"{self.title}: {file_name!r} names camera {camera}; this dataset "
                               f"has cameras 1-{self.cameras}")
        if pid < JUNK_PID:
            raise DatasetError(f"{self.title}: {file_name!r} has person id {pid}; ids are >= 0 "
                               "(-1 marks junk boxes)")
        return pid, camera - 1


MARKET1501 = Layout(
    name="market1501", title="Market-1501", dataset_dir="market1501",
    version_dir="Market-1501-v15.09.15", cameras=6, name_format="0002_c1s1_000451_03.jpg",
    how_to_get="download Market-1501-v15.09.15.zip (Zheng et al., ICCV 2015; mirrors are listed "
               "in torchreid's dataset docs) and unzip it under <root>/market1501/",
)
DUKEMTMC_REID = Layout(
    name="dukemtmc_reid", title="DukeMTMC-reID", dataset_dir="dukemtmc-reid",
    version_dir="DukeMTMC-reID", cameras=8, name_format="0001_c2_f0046182.jpg",
    how_to_get="download DukeMTMC-reID.zip (Zheng et al., ICCV 2017; see torchreid's dataset "
               "docs) and unzip it under <root>/dukemtmc-reid/",
)
