"""The plugin is an installable package: pip builds a wheel that carries the
enabled file and the templates (built from a copy, so the source tree stays
clean; no network: --no-index, --no-build-isolation)."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackageTest(unittest.TestCase):
    def test_pip_builds_a_wheel_with_the_enabled_file_and_templates(self):
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, 'src')
            shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
                'tests', 'devserver', '__pycache__', 'build', '*.egg-info'))
            out = os.path.join(tmp, 'wheels')
            subprocess.run(
                [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                 '--no-index', '-q', '-w', out, source],
                check=True, capture_output=True, text=True)
            wheels = os.listdir(out)
            self.assertEqual(1, len(wheels), wheels)
            names = zipfile.ZipFile(os.path.join(out, wheels[0])).namelist()
        self.assertIn('navigator_horizon/enabled/_1495_navigator_port_forwards.py', names)
        self.assertIn('navigator_horizon/templates/navigator_horizon/port_forwards/_create.html',
                      names)
        self.assertIn('navigator_horizon/templates/navigator_horizon/instance_overview.html',
                      names)


if __name__ == '__main__':
    unittest.main()
